"""Issue 29's benchmark: a real stream built from BasicMotions, through a redis-server and a worker.

``python -m bench.streams [--out results/streams]`` writes ``results/streams.md`` and ``.json``:

1. **Recordings.** The 40 training cases of BasicMotions (6 channels, 10 Hz, 100 samples each)
   concatenated in one seeded order (one device), and the 40 test cases in a different seeded order for
   each of 4 simulated devices: segment boundaries are known.
2. **Leakage check.** On the training recording, windows of 40 samples every 5: a model trained on the
   time-block split (last 20 % held out, a window's gap) and one on a random-window split, each scored
   on its own held-out windows.
3. **Served model.** ``bigru-train``'s recording path (:func:`training.run.run`, ``window=40``,
   ``hop=5``) on the whole training recording.
4. **Stream.** The test recordings through :class:`producer.streaming.StreamPublisher` (window 40, hop
   10) with a short gap (padded) on one device, a long one (a restart) on another, and a gateway that
   restarts at 60 % and replays from 50 %; a worker drains it; the segmenter turns the results into
   segments. Windows published vs expected, window accuracy vs per-sample accuracy of the smoothed
   timeline, boundaries within one hop.
5. **Sustained load** (:mod:`bench.streams_load`) and producer CPU per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness.localredis import LocalRedis
from bench.harness.workers import worker_process_env
from bench.streams_load import cpu_per_sample, sustained_load
from producer.client import Producer
from producer.results import ResultsReader
from producer.segments import Segment, Segmenter
from producer.streaming import StreamPublisher
from producer.windower import Windower, WindowSpec, expected_windows
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys
from training.datasets import dataset_split_files, default_datasets
from training.model.data import Dataset
from training.model.formats import load_ts
from training.model.recording import Recording, save_recording_csv
from training.recordings import Cut, block_split, random_window_split

RATE_HZ, WINDOW, TRAIN_HOP, HOP, DEVICES, SEED = 10.0, 40, 5, 10, 4, 29
PERIOD_US = int(1e6 / RATE_HZ)
#: (smooth, hold) pairs of the segmenter also scored on the same results.
SEGMENTER_GRID = ((1, 1), (1, 2), (3, 1), (3, 2), (5, 2))


def recording(ds: Dataset, orders: list[np.ndarray], name: str) -> Recording:
    """``ds``'s cases concatenated per device in the given orders (device ``dev-<i>``), 10 Hz from t = 0."""
    t, x, dev, y = [], [], [], []
    for d, order in enumerate(orders):
        cases = [ds.X[i] for i in order]
        n = sum(len(c) for c in cases)
        t.append(np.arange(n, dtype=np.int64) * PERIOD_US)
        x.append(np.concatenate(cases))
        dev.append(np.full(n, f"dev-{d}", object))
        y.append(np.concatenate([np.full(len(ds.X[i]), ds.y[i]) for i in order]))
    return Recording(np.concatenate(t), np.concatenate(x).astype(np.float32), np.concatenate(dev),
                     np.concatenate(y).astype(np.int64), list(ds.classes), [f"c{i}" for i in range(ds.n_features)], name)


def _train(train: Dataset, test: Dataset, seed: int) -> float:
    """Accuracy on ``test`` of a model trained on ``train`` the way ``bigru-train`` trains (refit, no validation run)."""
    from training.run import RunData, evaluate_checkpoint, model_config, train_model
    from training.train import TrainConfig

    _, ckpt = train_model(RunData(train, Dataset([], np.zeros(0, np.int64), train.classes), None),
                          model_config(train, {}), TrainConfig(seed=seed, time_budget=30.0), refit=True, validate=False)
    return float(evaluate_checkpoint(ckpt, test)["accuracy"])


def leakage(rec: Recording) -> dict[str, Any]:
    """Held-out accuracy of the time-block split beside the random-window split of the same recording."""
    cut = Cut(WINDOW, TRAIN_HOP)
    tr, _, te = block_split(rec, cut, 0.0, 0.2)
    rtr, rte = random_window_split(rec, cut, 0.2, seed=SEED)
    return {"time_block": {"train": len(tr), "test": len(te), "accuracy": _train(tr, te, SEED)},
            "random_window": {"train": len(rtr), "test": len(rte), "accuracy": _train(rtr, rte, SEED)}}


def stream_plan(rec: Recording) -> dict[str, np.ndarray]:
    """Per device, the sample indices the gateway sees: dev-1 loses 3 samples (padded), dev-2 60 (a restart)."""
    plan = {}
    for d in rec.devices:
        idx = np.arange(int(np.count_nonzero(rec.device == d)))
        if d == "dev-1":
            idx = idx[(idx < 1000) | (idx >= 1003)]
        if d == "dev-2":
            idx = idx[(idx < 2000) | (idx >= 2060)]
        plan[d] = idx
    return plan


def gateway(r: Any, keys: Keys, rec: Recording, plan: dict[str, np.ndarray], lo: float, hi: float,
            spec: WindowSpec) -> StreamPublisher:
    """One gateway run: the share [lo, hi) of every device's samples, interleaved 10 at a time."""
    pub = StreamPublisher(Producer(r, keys, idempotence=IdempotentWriter(keys, "gateway", 3600)), Windower(spec))
    parts = {d: idx[int(lo * len(idx)): int(hi * len(idx))] for d, idx in plan.items()}
    rows = {d: rec.of_device(d) for d in plan}
    for step in range(0, max(len(p) for p in parts.values()), 10):
        batch = []
        for d, p in parts.items():
            sel = p[step: step + 10]
            if len(sel):
                batch.append((d, rows[d].t_us[sel], rows[d].x[sel]))
        pub.push_many(batch)
    pub.close()
    return pub


def timeline_scores(rec: Recording, plan: dict[str, np.ndarray], segs: list[Segment],
                    results: list[Any], hop_us: int) -> dict[str, Any]:
    """Per-sample accuracy of the segments, window accuracy of the raw results, boundaries within one hop."""
    assert rec.y is not None
    covered = correct = 0
    hits = total_b = false_b = 0
    for d, idx in plan.items():
        part = rec.of_device(d)
        assert part.y is not None
        mine = sorted((s for s in segs if s.key == d), key=lambda s: s.start_us)
        starts = np.array([s.start_us for s in mine])
        labels = [s.label for s in mine]
        t = part.t_us[idx]
        k = np.searchsorted(starts, t, side="right") - 1
        for ti, ki, yi in zip(t, k, part.y[idx]):
            if ki >= 0 and ti <= mine[ki].end_us:
                covered += 1
                correct += labels[ki] == rec.classes[int(yi)]
        change = np.flatnonzero(np.diff(part.y)) + 1
        truth = part.t_us[change] - PERIOD_US // 2
        pred = np.array([s.start_us for s in mine[1:]])
        total_b += len(truth)
        hits += sum(bool(len(pred)) and np.abs(pred - tb).min() <= hop_us for tb in truth)
        false_b += sum(not len(truth) or np.abs(truth - pb).min() > hop_us for pb in pred)
    ok = 0
    for res in results:
        part = rec.of_device(res.span.key)
        assert part.y is not None
        mid = res.span.seq * HOP + WINDOW // 2
        ok += res.class_name == rec.classes[int(part.y[mid])]
    samples = sum(len(i) for i in plan.values())
    return {"window_accuracy": ok / len(results), "sample_accuracy": correct / covered, "coverage": covered / samples,
            "boundaries": total_b, "boundaries_within_hop": hits, "boundary_share": hits / max(1, total_b),
            "extra_boundaries": int(false_b), "segments": len(segs)}


def run_stream(rec: Recording, ckpt: str, work: Path) -> dict[str, Any]:
    """Stream the test recording with gaps and a gateway restart through a worker; windows and accuracy figures."""
    spec = WindowSpec.at_rate(WINDOW, HOP, RATE_HZ)
    plan = stream_plan(rec)
    with LocalRedis() as server:
        r = server.client()
        keys = Keys("streams", "streams")
        t0 = time.process_time()
        first = gateway(r, keys, rec, plan, 0.0, 0.6, spec)
        replay = gateway(r, keys, rec, plan, 0.5, 1.0, spec)
        cpu_s = time.process_time() - t0
        expected = {d: expected_windows(idx, spec) for d, idx in plan.items()}
        published = r.xlen(keys.shard(0).windows)
        env = worker_process_env(redis_url=server.url, prefix="streams", group="streams", checkpoint=ckpt,
                                 burst=True, burst_idle_ms=1000)
        subprocess.run([sys.executable, "-m", "worker.cli"], env=env, check=True, timeout=600,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = [x for x in ResultsReader(r, keys).collect(published, timeout_s=30) if x.span is not None]
        seg = Segmenter()
        segs = seg.add_results(results) + seg.flush()
        grid = []
        for smooth, hold in SEGMENTER_GRID:  # how the two knobs move the figures (the default is the headline)
            other = Segmenter(smooth, hold)
            sc = timeline_scores(rec, plan, other.add_results(results) + other.flush(), results, HOP * PERIOD_US)
            grid.append({"smooth": smooth, "hold": hold, **{k: sc[k] for k in ("sample_accuracy", "boundary_share",
                                                                              "extra_boundaries", "segments")}})
        spans = [x.span for x in results if x.span is not None]
        per_dev = {d: sum(1 for sp in spans if sp.key == d) for d in plan}
        unique = len({(sp.key, sp.seq) for sp in spans})
        counts = first.windower.counts
        return {"expected": expected, "published": published, "results": len(results), "unique_results": unique,
                "results_per_device": per_dev, "sent_by_gateways": first.counts.windows + replay.counts.windows,
                "padded": counts.padded + replay.windower.counts.padded,
                "restarts": counts.restarts + replay.windower.counts.restarts,
                "samples_pushed": counts.samples + replay.windower.counts.samples,
                "push_publish_cpu_us_per_sample": 1e6 * cpu_s / (counts.samples + replay.windower.counts.samples),
                "segmenter_grid": grid,
                **timeline_scores(rec, plan, segs, results, HOP * PERIOD_US)}


def main(argv: list[str] | None = None) -> int:
    """Build, train, stream, measure; write ``<out>.md`` and ``<out>.json``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="results/streams")
    p.add_argument("--loads", default="10x25,20x50,50x50,100x50,250x50,500x50,1000x50", help="devices x Hz, hop 25, in order")
    p.add_argument("--load-seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    train_file, test_file = dataset_split_files("BasicMotions", default_datasets())
    train_ds, test_ds = load_ts(str(train_file)), load_ts(str(test_file))
    rng = np.random.default_rng(SEED)
    train_rec = recording(train_ds, [rng.permutation(len(train_ds))], "BasicMotions-train")
    test_rec = recording(test_ds, [rng.permutation(len(test_ds)) for _ in range(DEVICES)], "BasicMotions-test")
    out: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}",
                           "window": WINDOW, "hop": HOP, "train_hop": TRAIN_HOP, "rate_hz": RATE_HZ,
                           "devices": DEVICES}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_recording_csv(train_rec, work / "train.csv")
        out["leakage"] = leakage(train_rec)
        from training.run import RunOptions, run
        from training.train import TrainConfig

        summary = run(RunOptions(data=str(work / "train.csv"), out=str(work / "ckpt"), window=WINDOW, hop=TRAIN_HOP,
                                 test_fraction=0.0, plots=False), TrainConfig(seed=SEED, time_budget=45.0))
        out["stream"] = run_stream(test_rec, summary["checkpoint"], work)
        out["load"] = sustained_load(summary["checkpoint"], WINDOW, [tuple(map(int, x.split("x")))  # type: ignore[misc]
                                                                     for x in args.loads.split(",")], args.load_seconds)
    out["cpu"] = cpu_per_sample(test_rec, WindowSpec.at_rate(WINDOW, HOP, RATE_HZ))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    from bench.streams_report import render

    Path(args.out + ".md").write_text(render(out))
    print(json.dumps(out, default=float)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
