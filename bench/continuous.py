"""``python -m bench.continuous``: the continuous loop end to end on the synthetic task (results/continuous.md).

1. **Shift scenario, once, live.** A throwaway redis-server; the primary trained with the trainer's defaults
   (synthetic task, T = 20) and served by a ``bigru-worker`` process that follows the registry; the recorder
   (``bigru-train record``) and the watcher (``bigru-train watch``, which starts the candidate's shadow
   replicas) as processes of their own. A paced producer publishes windows with ``cid``s; after a warm-up
   the class means move by one standard deviation; a labeller sends the true class of a fraction of the
   windows after a delay. The driver times detection (first heartbeat at "act"), the labels the rule waited
   for, the retrain, the shadow decision and the reload, then serves ``after`` more windows with the
   promoted model and scores them against a model trained on the shifted distribution with the same
   defaults (evaluated offline on the very same windows). Every published ``cid`` must have exactly one
   primary result.
2. **No shift, 10 trials, offline.** Candidates retrained (shorter budget) on the original data plus
   unshifted live windows, each judged by the promotion rule's looks on fresh labelled windows (the rule on
   fixed data; a full live loop x10 does not fit this machine).
3. **Recorder memory.** The recorder's store fed at a stated rate until its byte bound holds, RSS sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.harness import LocalRedis
from bench.harness.workers import memory_kib, terminate
from bench.pipeline import ROOT, WorkerConfig, Workers
from producer.client import Producer
from producer.labels import send_labels
from protocol import registry
from protocol.keys import Keys
from protocol.results import decode_any_result
from training.live import Retained, Served
from training.loop_settings import LoopSettings
from training.mcnemar import Evidence, decide
from training.model.checkpoint import save_checkpoint
from training.model.data import Dataset, synthetic
from training.publish import publish_checkpoint
from training.retrain import mix
from training.run import RunData, evaluate_checkpoint, model_config, train_model
from training.train import TrainConfig, predict, to_tensors
from training.watch import rule_of

SHIFT = 1.0  # class 0's standard deviation: both class means move by it
LENGTH = 20


def shifted(ds: Dataset, by: float) -> Dataset:
    """``ds`` with every value moved by ``by``."""
    return Dataset([x + by for x in ds.X], ds.y, ds.classes, ds.name, dict(ds.meta))


def train_default(ds: Dataset, val: Dataset, out: Path, budget: float | None = None) -> Path:
    """The trainer's default model and budget (``budget`` overrides the time budget) on ``ds``; the checkpoint path."""
    tcfg = TrainConfig() if budget is None else TrainConfig(time_budget=budget)
    _, ckpt = train_model(RunData(ds, val, None), model_config(ds, {}), tcfg, refit=True, validate=False)
    return save_checkpoint(ckpt, out, set_latest=True)


class Traffic:
    """The paced producer and the delayed labeller, in threads; ``shift`` moves the class means."""

    def __init__(self, r: redis.Redis, keys: Keys, rate: float, label_share: float, label_delay_s: float) -> None:
        self.r, self.keys, self.rate = r, keys, rate
        self.label_share, self.label_delay_s = label_share, label_delay_s
        self.shift = 0.0
        self.truth: dict[str, int] = {}
        self.shifted_at: dict[str, bool] = {}
        self.windows: dict[str, np.ndarray] = {}
        self.published = 0
        self.labels_sent = 0
        self.stop = threading.Event()
        self.paused = threading.Event()
        self._due: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self.rng = np.random.default_rng(42)

    def publish_loop(self) -> None:
        prod = Producer(self.r, self.keys)
        tick, seed = 0.1, 1000
        while not self.stop.is_set():
            t0 = time.monotonic()
            if not self.paused.is_set():
                n = max(1, int(self.rate * tick))
                ds = shifted(synthetic(max(2, n), LENGTH, seed), self.shift)
                seed += 1
                cids = [f"c{self.published + i}" for i in range(n)]
                prod.publish_many(ds.X[:n], ids=cids)
                now = time.monotonic()
                with self._lock:
                    for cid, x, y in zip(cids, ds.X[:n], ds.y[:n]):
                        self.truth[cid], self.shifted_at[cid], self.windows[cid] = int(y), self.shift != 0, x
                        if self.rng.random() < self.label_share:
                            self._due.append((now + self.label_delay_s, cid, str(int(y))))
                self.published += n
            time.sleep(max(0.0, tick - (time.monotonic() - t0)))

    def label_loop(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [d for d in self._due if d[0] <= now]
                self._due = [d for d in self._due if d[0] > now]
            if due:
                sent = send_labels(self.r, self.keys, [(c, y) for _, c, y in due], classes=["0", "1"])
                self.labels_sent += sum(s.ok for s in sent)
            time.sleep(0.2)

    def start(self) -> None:
        for f in (self.publish_loop, self.label_loop):
            threading.Thread(target=f, daemon=True).start()


def _primary_results(r: redis.Redis, keys: Keys) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for _, f in r.xrange(keys.shard(0).results):
        for res in decode_any_result(f):
            out.setdefault(res.cid, []).append((res.model, res.class_name))
    return out


def _drain(r: redis.Redis, keys: Keys, published: int, timeout_s: float = 60.0) -> None:
    """Wait until the primary group has read and acknowledged everything (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        g = {x["name"].decode(): x for x in r.xinfo_groups(keys.shard(0).windows)}.get(keys.group)
        if g is not None and not g["pending"] and not g["lag"]:
            return
        time.sleep(0.2)


def _max_psi(r: redis.Redis, keys: Keys) -> float:
    worst = 0.0
    for raw in r.hvals(keys.workers):
        psi = (json.loads(raw).get("drift") or {}).get("max_psi")
        worst = max(worst, psi or 0.0)
    return worst


def scenario(work: Path, rate: float, warm: int, after: int, args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: the shift scenario, live."""
    with LocalRedis() as srv:
        url, prefix = srv.url, "cont"
        r = redis.Redis.from_url(url)
        keys = Keys(prefix, prefix)
        t = time.monotonic()
        original = synthetic(4000, LENGTH, 0)
        primary_path = train_default(original, synthetic(400, LENGTH, 1), work / "primary", args.budget_s)
        primary_s = time.monotonic() - t
        publish_checkpoint(r, keys, primary_path.read_bytes(), notify=False)
        primary_version = registry.read_pointer(r, keys).version  # type: ignore[union-attr]
        loop = LoopSettings(redis_url=url, prefix=prefix, group=prefix)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "BIGRU_REDIS_URL": url, "BIGRU_PREFIX": prefix,
               "BIGRU_GROUP": prefix, "BIGRU_LIVE_DIR": str(work / "live"), "BIGRU_WATCH_OUT": str(work / "runs"),
               "BIGRU_WATCH_MIN_LABELS": "0", "BIGRU_WATCH_DRIFT_HOLD_S": str(args.drift_hold_s),
               "BIGRU_WATCH_DRIFT_MIN_LABELS": str(args.drift_min_labels), "BIGRU_WATCH_MAX_LIVE": str(args.max_live),
               "BIGRU_WATCH_MIN_GAP_S": "0", "BIGRU_WATCH_POLL_S": "1", "BIGRU_PROMOTE_MIN_WAIT_S": str(args.min_wait_s),
               "BIGRU_TRAIN_N": "4000", "BIGRU_TRAIN_LENGTH": str(LENGTH),
               **({"BIGRU_TRAIN_TIME_BUDGET": str(args.budget_s)} if args.budget_s else {})}
        logs = work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with Workers(url, prefix, primary_path.parent, WorkerConfig(), logs) as w:
            shadow_env = {k: v for k, v in w.env.items() if k.startswith("BIGRU_")}
            env_w = {**env, **{k: v for k, v in shadow_env.items() if k not in env}}
            rec = subprocess.Popen([sys.executable, "-m", "training.cli", "record"], env=env_w, cwd=ROOT,
                                   stdout=open(logs / "record.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
            watch = subprocess.Popen([sys.executable, "-m", "training.cli", "watch"], env=env_w, cwd=ROOT,
                                     stdout=open(logs / "watch.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
            time.sleep(3)  # the recorder's groups exist before the first window
            traffic = Traffic(r, keys, rate, args.label_share, args.label_delay_s)
            traffic.start()
            marks: dict[str, float] = {}
            decided: dict[str, str] = {}
            rec_rss: list[int] = []
            try:
                while traffic.published < warm:
                    time.sleep(0.2)
                traffic.shift = SHIFT
                marks["shift"] = time.monotonic()
                deadline = marks["shift"] + args.timeout_s
                while time.monotonic() < deadline:
                    now = time.monotonic()
                    rec_rss.append(memory_kib(rec.pid).get("VmRSS", 0))
                    if "detected" not in marks and _max_psi(r, keys) >= loop.watch_drift_psi:
                        marks["detected"] = now
                    lp = {k.decode(): v.decode() for k, v in r.hgetall(keys.loop).items()}
                    if "retrain_start" not in marks and "last_retrain" in lp:
                        marks["retrain_start"] = now
                    cand = {k.decode(): v.decode() for k, v in r.hgetall(keys.model_candidate).items()}
                    if "proposed" not in marks and cand.get("state") == "shadowing":
                        marks["proposed"] = now
                    if cand.get("state") in ("promoted", "rejected") and "decided" not in marks:
                        marks["decided"] = now
                        decided = dict(cand)
                        if cand["state"] == "rejected":
                            break
                    if "decided" in marks and cand.get("state") == "promoted":
                        beats = [json.loads(v).get("model") for v in r.hvals(keys.workers)]
                        if beats and all(m == cand["version"] for m in beats):
                            marks["reloaded"] = now
                            break
                    time.sleep(0.25)
                start_after = traffic.published
                while "reloaded" in marks and traffic.published < start_after + after:
                    time.sleep(0.2)
                traffic.paused.set()
                time.sleep(args.label_delay_s + 3)
                traffic.stop.set()
                _drain(r, keys, traffic.published)
            finally:
                terminate(watch, 60)
                terminate(rec, 30)
        cand = decided or {k.decode(): v.decode() for k, v in r.hgetall(keys.model_candidate).items()}
        results = _primary_results(r, keys)
        recorder = {k.decode(): v.decode() for k, v in r.hgetall(keys.recorder).items()}
        lp = {k.decode(): v.decode() for k, v in r.hgetall(keys.loop).items()}
    # Accuracy on live traffic, per phase, from the primary's results.
    def acc(cids: list[str]) -> float | None:
        got = [results[c][0][1] == str(traffic.truth[c]) for c in cids if c in results]
        return round(sum(got) / len(got), 4) if got else None

    published = sorted(traffic.truth, key=lambda c: int(c[1:]))
    cand_v = cand.get("version", "")
    served_by = {c: results[c][0][0] for c in published if c in results}
    pre = [c for c in published if not traffic.shifted_at[c]]
    shifted_old = [c for c in published if traffic.shifted_at[c] and served_by.get(c) == primary_version]
    promoted = [c for c in published if served_by.get(c) == cand_v and cand.get("state") == "promoted"]
    t = time.monotonic()
    reference = train_default(shifted(synthetic(4000, LENGTH, 0), SHIFT), shifted(synthetic(400, LENGTH, 1), SHIFT),
                              work / "reference", args.budget_s)
    reference_s = time.monotonic() - t
    from training.model.checkpoint import load_checkpoint

    ref_ckpt = load_checkpoint(reference)
    after_ds = Dataset([traffic.windows[c] for c in promoted], np.array([traffic.truth[c] for c in promoted]),
                       ["0", "1"], "after")
    ref_acc = evaluate_checkpoint(ref_ckpt, after_ds)["accuracy"] if promoted else None
    counts = [len(v) for v in results.values()]
    m = marks
    parts = {k: round(m[b] - m[a], 1) if a in m and b in m else None for k, (a, b) in {
        "detection_s": ("shift", "detected"), "labels_wait_s": ("detected", "retrain_start"),
        "retrain_s": ("retrain_start", "proposed"), "shadow_decision_s": ("proposed", "decided"),
        "reload_s": ("decided", "reloaded"), "shift_to_promoted_s": ("shift", "decided"),
        "shift_to_serving_s": ("shift", "reloaded")}.items()}
    return {
        "rate_windows_per_s": rate, "label_share": args.label_share, "label_delay_s": args.label_delay_s,
        "primary_train_s": round(primary_s, 1), "reference_train_s": round(reference_s, 1),
        "published": len(published), "labels_sent": traffic.labels_sent,
        "lost": sum(c not in results for c in published), "answered_twice": sum(n > 1 for n in counts),
        "candidate": cand, "loop": lp, "recorder": recorder, "parts": parts,
        "accuracy": {"pre_shift_primary": acc(pre), "shifted_primary": acc(shifted_old),
                     "shifted_promoted_live": acc(promoted), "shifted_reference_same_windows": ref_acc,
                     "windows_after_promotion": len(promoted)},
        "recorder_rss_mib": {"max": round(max(rec_rss, default=0) / 1024, 1), "last": round(rec_rss[-1] / 1024, 1) if rec_rss else None},
    }


def no_shift_trials(work: Path, trials: int, budget: float, first: int = 0,
                    done: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Part 2: candidates retrained without a shift, each judged by the rule's looks on fresh windows
    (trials ``first`` .. ``trials - 1``, after the ``done`` ones of an earlier run with the same primary)."""
    from training.model.checkpoint import load_checkpoint

    root = work / "trial-primary"
    primary = root if (root / "latest").exists() else train_default(
        synthetic(4000, LENGTH, 0), synthetic(400, LENGTH, 1), root, budget)

    rule = rule_of(LoopSettings())
    p_ckpt = load_checkpoint(primary)
    rows = [r for r in done or [] if r["trial"] < first]
    for i in range(first, trials):
        live = synthetic(2000, LENGTH, 200 + i)
        train = mix(synthetic(4000, LENGTH, 0), live, LoopSettings().watch_live_weight, i)
        tcfg = TrainConfig(time_budget=budget, seed=i + 1)
        _, c_ckpt = train_model(RunData(train, live, None), model_config(train, {}), tcfg, refit=True, validate=False)
        test = synthetic(rule.max_pairs, LENGTH, 300 + i)

        pr, cr = _right(p_ckpt, test), _right(c_ckpt, test)
        looks, outcome, d = 0, "wait", None
        for k in range(rule.looks):
            n = rule.look_at(k)
            ev = Evidence(both=int((pr[:n] & cr[:n]).sum()), primary_only=int((pr[:n] & ~cr[:n]).sum()),
                          candidate_only=int((~pr[:n] & cr[:n]).sum()), neither=int((~pr[:n] & ~cr[:n]).sum()))
            d = decide(ev, rule, rule.min_wait_s, looks)
            looks += d.looked
            if d.outcome != "wait":
                outcome = d.outcome
                break
        assert d is not None
        rows.append({"trial": i, "outcome": outcome, **{k: d.to_dict()[k] for k in ("pairs", "b", "c", "p_better",
                                                                                     "primary_accuracy", "candidate_accuracy")}})
        print(json.dumps(rows[-1]), flush=True)
    return {"trials": rows, "promoted": sum(r["outcome"] == "promote" for r in rows), "budget_s": budget}


def _right(ck: Any, test: Dataset) -> np.ndarray:
    """Which windows of ``test`` the checkpoint classifies correctly."""
    x, lengths, y = to_tensors(test, ck.mean, ck.std)
    return np.asarray((predict(ck.build_model("cpu"), x, lengths).argmax(-1) == y).numpy(), dtype=bool)


def recorder_memory(rate: int, seconds: int, max_mb: float) -> dict[str, Any]:
    """Part 3: the recorder's store fed ``rate`` windows/s of [20, 1] float32 for ``seconds`` (simulated time)."""
    store = Retained(retain_ms=seconds * 1000, max_windows=10**9, max_bytes=int(max_mb * 2**20))
    pid = os.getpid()
    rss0 = memory_kib(pid)["VmRSS"]
    samples = []
    x = np.zeros((LENGTH, 1), dtype=np.float32)
    t0 = time.monotonic()
    for s in range(seconds):
        for i in range(rate):
            store.add(f"c{s}-{i}", Served(x.copy(), s * 1000, "v"))
        store.expire(s * 1000)
        if s % max(1, seconds // 20) == 0 or s == seconds - 1:
            samples.append({"t_s": s, "windows": len(store), "store_mib": round(store.bytes / 2**20, 1),
                            "evicted_cids_remembered": store.remembered,
                            "rss_growth_mib": round((memory_kib(pid)["VmRSS"] - rss0) / 1024, 1)})
    return {"rate": rate, "seconds": seconds, "max_mb": max_mb, "feed_s": round(time.monotonic() - t0, 1),
            "samples": samples, "evicted": store.evicted}


def main(argv: list[str] | None = None) -> int:
    """Run the three parts; write results/continuous.json (the .md is written by hand from it)."""
    p = argparse.ArgumentParser(prog="python -m bench.continuous", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=250.0)
    p.add_argument("--warm", type=int, default=1000)
    p.add_argument("--after", type=int, default=4000)
    p.add_argument("--label-share", type=float, default=0.5)
    p.add_argument("--label-delay-s", type=float, default=2.0)
    p.add_argument("--drift-hold-s", type=float, default=10.0)
    p.add_argument("--drift-min-labels", type=int, default=4500)
    p.add_argument("--max-live", type=int, default=4000)
    p.add_argument("--min-wait-s", type=float, default=10.0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--budget-s", type=float, help="time budget of every training (default: the trainer's)")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--trial-budget-s", type=float, default=10.0)
    p.add_argument("--first-trial", type=int, default=0, help="resume the trials here (earlier ones from --out)")
    p.add_argument("--mem-rate", type=int, default=5000)
    p.add_argument("--mem-seconds", type=int, default=120)
    p.add_argument("--mem-max-mb", type=float, default=32.0)
    p.add_argument("--parts", default="scenario,trials,memory")
    p.add_argument("--work", default="/tmp/bench-continuous")
    p.add_argument("--out", default=str(ROOT / "results" / "continuous.json"))
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = Path(args.out)
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}  # parts run later replace theirs
    out["machine"] = f"{os.cpu_count()} CPUs, shared with two other agents' work"
    out.setdefault("args", {})[args.parts] = vars(args)
    parts = args.parts.split(",")
    if "memory" in parts:
        out["memory"] = recorder_memory(args.mem_rate, args.mem_seconds, args.mem_max_mb)
        print(json.dumps(out["memory"]), flush=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    if "scenario" in parts:
        out["scenario"] = scenario(work, args.rate, args.warm, args.after, args)
        print(json.dumps(out["scenario"]), flush=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    if "trials" in parts:
        done = (out.get("no_shift") or {}).get("trials", [])
        out["no_shift"] = no_shift_trials(work, args.trials, args.trial_budget_s, args.first_trial, done)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
