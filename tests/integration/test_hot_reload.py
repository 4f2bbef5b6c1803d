"""Hot reload with real worker processes under continuous producer load (real redis-server).

Publishes three successors in a row, then three bad checkpoints, then rolls back with the
``bigru-train promote`` command; and two replicas started from different checkpoint directories
converge through the registry (announcement, then SIGHUP after a missed announcement).
Swap times (publish -> every replica serving the version) are printed and written to
``$BIGRU_REPORT_DIR/hot_reload.json`` when that variable is set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from bench import harness
from producer.client import Producer
from producer.results import ResultsReader
from protocol import registry
from protocol.keys import Keys
from tests.helpers import wait_for
from tests.zoo import Zoo, zoo_fixture  # noqa: F401  (the session's tiny checkpoints)
from training.model.checkpoint import FILENAME, load_checkpoint, set_latest_version, to_bytes
from training.publish import publish_checkpoint
from worker.health import live_replicas

GATE = {"BIGRU_RELOAD_MIN_ACCURACY": "0.7", "BIGRU_RELOAD_MAX_DROP": "0.1", "BIGRU_LOG_LEVEL": "INFO"}






def serving(r: redis.Redis, keys: Keys) -> dict[str, str]:
    """consumer -> version, from the live heartbeats (what ``bigru-worker status`` shows)."""
    return {rep.consumer: rep.model for rep in live_replicas(r, keys)}


def converge(r: redis.Redis, keys: Keys, version: str, n: int, t0: float, timeout: float = 20.0) -> float:
    """Seconds from ``t0`` until all ``n`` replicas serve ``version``."""
    ok = wait_for(lambda: list(serving(r, keys).values()) == [version] * n, timeout)
    assert ok, f"replicas serve {serving(r, keys)}, expected {version}"
    return time.monotonic() - t0


def report(name: str, doc: dict[str, object]) -> None:
    """Print measurements; also write them where BIGRU_REPORT_DIR points."""
    print(f"\n{name}: {json.dumps(doc)}")
    out = os.environ.get("BIGRU_REPORT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(json.dumps(doc, indent=2))


@pytest.fixture
def load(r: redis.Redis, redis_url: str, prefix: str) -> Iterator[Callable[[], list[str]]]:
    """A producer thread publishing ~400 windows/s until the returned stop() is called."""
    keys = Keys(prefix, prefix)
    ids: list[str] = []
    stop = threading.Event()
    windows = [np.random.default_rng(i).standard_normal((20, 1)).astype(np.float32) for i in range(10)]

    def produce() -> None:
        p = Producer(redis.Redis.from_url(redis_url), keys)
        while not stop.is_set():
            ids.extend(p.publish_many(windows))
            time.sleep(0.025)

    t = threading.Thread(target=produce, daemon=True)
    t.start()

    def halt() -> list[str]:
        stop.set()
        t.join(10)
        return ids

    yield halt
    halt()


def start_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``bigru-worker`` as a child process, logging JSON to ``log``."""
    with open(log, "wb") as f:
        return harness.start_worker(env, args, stderr=f)


def stop_worker(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM and wait; the worker must exit cleanly."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()[-3000:]


def events(log: Path, name: str) -> list[dict[str, object]]:
    """The structlog JSON events called ``name`` in a worker log."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            doc = json.loads(line)
            if doc.get("event") == name:
                out.append(doc)
    return out


@pytest.mark.slow
def test_publishes_under_load_lose_nothing_refuse_bad_and_roll_back(
    r: redis.Redis, prefix: str, worker_env: dict[str, str], zoo: Zoo, tmp_path: Path, load: Callable[[], list[str]]
) -> None:
    keys = Keys(prefix, prefix)
    root = tmp_path / "ckpts"
    shutil.copytree(zoo.base, root)
    env = dict(worker_env, **GATE, BIGRU_CHECKPOINT=str(root), BIGRU_WORKER_NAME="hr")
    log = tmp_path / "workers.log"
    proc = start_worker(env, log, "--replicas", "2", "--max-batch", "32", "--max-wait-ms", "5")
    v0 = Zoo.version(zoo.base)
    good = [Zoo.version(g) for g in zoo.good]
    try:
        assert wait_for(lambda: len(serving(r, keys)) == 2, 90), log.read_text()[-3000:]
        load_started = time.monotonic()
        time.sleep(1.0)
        swaps = {}
        for g in zoo.good:  # three new checkpoints in a row, each followed by every replica
            t0 = time.monotonic()
            entry, _ = publish_checkpoint(r, keys, Zoo.data(g))
            swaps[entry.version] = round(converge(r, keys, entry.version, 2, t0), 3)
            time.sleep(0.7)
        # Three bad ones: wrong feature count and shuffled labels through the registry, a truncated
        # file through the checkpoint directory (found on SIGHUP, forwarded to both replicas). Each
        # waits for both refusals: a replica that checks after the next publish only sees the latest.
        bad: dict[str, str] = {}

        def refused_by_both(version: str, reason: str) -> None:
            bad[version] = reason
            assert wait_for(lambda: len(registry.refusals(r, keys, version)) == 2, 20), registry.refusals(r, keys, version)
            assert {n["reason"] for n in registry.refusals(r, keys, version).values()} == {reason}

        refused_by_both(publish_checkpoint(r, keys, Zoo.data(zoo.wrong_features))[0].version, "incompatible_features")
        refused_by_both(publish_checkpoint(r, keys, Zoo.data(zoo.shuffled))[0].version, "below_floor")
        ckpt = load_checkpoint(zoo.good[2])
        ckpt.version = ""
        data = to_bytes(ckpt)  # same weights, a newer version id
        (root / ckpt.version).mkdir()
        (root / ckpt.version / FILENAME).write_bytes(data[: len(data) // 2])
        set_latest_version(root, ckpt.version)
        proc.send_signal(signal.SIGHUP)
        refused_by_both(ckpt.version, "corrupt")
        assert list(serving(r, keys).values()) == [good[2]] * 2
        before = r.xlen(keys.shard(0).results)
        time.sleep(0.5)
        assert r.xlen(keys.shard(0).results) > before  # still serving
        # Rollback with the command line.
        t0 = time.monotonic()
        cli = subprocess.Popen([sys.executable, "-m", "training.cli", "promote", good[0]], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        command_s = converge(r, keys, good[0], 2, t0, timeout=90)  # watched while the command runs and exits
        done = time.time()
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err.decode()
        ptr = registry.read_pointer(r, keys)
        assert ptr is not None and ptr.action == "promoted"
        rollback_s = round(done - ptr.ts, 3)  # from the pointer move, without the command's start-up
        time.sleep(0.5)
        ids = load()
        load_s = time.monotonic() - load_started
        results = ResultsReader(r, keys).collect(len(ids), timeout_s=60)
        time.sleep(0.3)  # any duplicate would show in the stream length below
    finally:
        load()
        stop_worker(proc, log)
    per_input = Counter(res.input_id for res in results)
    assert set(per_input) == set(ids) and max(per_input.values()) == 1, "an input got no result or several"
    assert r.xlen(keys.shard(0).results) == len(ids)
    assert {res.status for res in results} == {"ok"} and r.xlen(keys.shard(0).dead) == 0
    # Versions per replica, in the order it produced results: forward only, then the rollback.
    for worker in ("hr-0", "hr-1"):
        seq = [res.model for res in results if res.worker == worker]
        runs = [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]
        assert runs[-1] == good[0] and runs[-2] == good[2], runs
        forward = runs[:-1]
        assert forward == sorted(forward) and len(set(forward)) == len(forward), runs
        assert set(forward) <= {v0, *good}
    refused_logs = events(log, "model_refused")
    assert {(e["version"], e["reason"]) for e in refused_logs} == set(bad.items())
    assert all(s < 10 for s in swaps.values()), swaps
    report("hot_reload", {"swap_s": swaps, "rollback_s": rollback_s, "promote_command_s": round(command_s, 2),
                          "inputs": len(ids), "results": len(results),
                          "lost": len(set(ids) - set(per_input)), "duplicates": sum(n - 1 for n in per_input.values()),
                          "dead": r.xlen(keys.shard(0).dead), "load_s": round(load_s, 1),
                          "rate_per_s": round(len(ids) / load_s)})


@pytest.mark.slow
def test_replicas_on_different_directories_converge_through_the_registry(
    r: redis.Redis, prefix: str, worker_env: dict[str, str], zoo: Zoo, tmp_path: Path
) -> None:
    keys = Keys(prefix, prefix)
    env = dict(worker_env, **GATE, BIGRU_RELOAD_INTERVAL_S="3600")  # no periodic check: only events and SIGHUP
    dirs = {"a": zoo.base, "b": zoo.good[0]}
    procs = {name: start_worker(env, tmp_path / f"{name}.log", "--worker-name", name, "--checkpoint", str(d))
             for name, d in dirs.items()}
    try:
        expect = {"a-0": Zoo.version(zoo.base), "b-0": Zoo.version(zoo.good[0])}
        assert wait_for(lambda: serving(r, keys) == expect, 90), serving(r, keys)
        # Retrain and publish with the command line; both replicas move to the new version.
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "training.cli", "--data", "synthetic", "--n", "800", "--epochs", "3",
                              "--hidden", "8", "--layers", "1", "--seed", "7", "--out", str(tmp_path / "new"), "--publish",
                              "--json"], env=env, capture_output=True, timeout=180)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        summary = json.loads(out.stdout.decode().splitlines()[-1])
        new = summary["published"]["version"]
        assert new == summary["version"] and registry.read_pointer(r, keys).version == new  # type: ignore[union-attr]
        t1 = time.monotonic()
        converge(r, keys, new, 2, t1)
        # A move nobody announced is found on SIGHUP.
        publish_checkpoint(r, keys, Zoo.data(zoo.good[1]), set_latest=False)  # registered, not yet latest
        registry.promote(r, keys, Zoo.version(zoo.good[1]), notify=False)
        time.sleep(1.5)
        assert list(serving(r, keys).values()) == [new] * 2
        t2 = time.monotonic()
        for p in procs.values():
            p.send_signal(signal.SIGHUP)
        sighup_s = converge(r, keys, Zoo.version(zoo.good[1]), 2, t2)
        status = subprocess.run([sys.executable, "-m", "worker.cli", "status", "--json"], env=env, capture_output=True,
                                timeout=60)
        doc = json.loads(status.stdout)["models"]
        assert doc["serving"] == {"a-0": Zoo.version(zoo.good[1]), "b-0": Zoo.version(zoo.good[1])} and doc["behind"] == []
        report("hot_reload_dirs", {"train_and_publish_s": round(t1 - t0, 2), "sighup_swap_s": round(sighup_s, 3)})
    finally:
        for name, p in procs.items():
            stop_worker(p, tmp_path / f"{name}.log")
