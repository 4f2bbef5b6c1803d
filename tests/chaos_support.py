"""Shared pieces of the chaos tests: the oracle (accepted input ids vs results ∪ dead letters),
worker processes, RSS sampling and the figures each test records under ``results/chaos/``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from bench import harness
from protocol.keys import Keys

_H = TypeVar("_H")

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "results" / "chaos"


class Outputs:
    """Everything published on the results and dead-letter streams, read incrementally."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self.pos = {s: "0-0" for sk in keys.all_shards() for s in (sk.results, sk.dead)}
        self.kinds = {sk.results: "result" for sk in keys.all_shards()} | {sk.dead: "dead" for sk in keys.all_shards()}
        self.results: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.dead_reasons: dict[str, str] = {}
        self.workers: dict[str, str] = {}
        self.ts_us: dict[str, int] = {}

    def poll(self) -> int:
        """Read what is new; returns the number of entries read (0 while Redis is down)."""
        n = 0
        try:
            for stream, pos in self.pos.items():
                for _, entries in self.r.xread({stream: pos}, count=10_000) or []:
                    for eid, f in entries:
                        self.pos[stream] = eid.decode()
                        n += 1
                        if self.kinds[stream] == "result":
                            iid = f[b"in"].decode()
                            self.results[iid] += 1
                            self.workers[iid] = f[b"worker"].decode()
                            self.ts_us[iid] = int(f[b"ts"])
                        else:
                            iid = f[b"dead.id"].decode()
                            self.dead[iid] += 1
                            self.dead_reasons[iid] = f[b"dead.reason"].decode()
        except redis.ConnectionError:
            return 0
        return n

    def served(self) -> set[str]:
        """Input ids with a result or a dead letter."""
        return set(self.results) | set(self.dead)

    def wait_served(self, ids: Iterable[str], timeout_s: float) -> float:
        """Poll until every id in ``ids`` is served; returns the seconds it took (raises on timeout)."""
        want = set(ids)
        t0 = time.monotonic()
        while not want <= self.served():
            if time.monotonic() - t0 > timeout_s:
                raise AssertionError(f"{len(want - self.served())} of {len(want)} ids unserved after {timeout_s}s")
            if not self.poll():
                time.sleep(0.05)
        return time.monotonic() - t0


@dataclass
class Figures:
    """The oracle's verdict for one chaos test."""

    test: str
    sent: int
    results: int
    dead_lettered: int
    duplicates: int
    lost: int
    extra: dict[str, Any] = field(default_factory=dict)


def audit(test: str, out: Outputs, accepted: Iterable[str], **extra: Any) -> Figures:
    """Compare accepted input ids with results ∪ dead letters, record the figures, and return them.

    ``duplicates`` counts surplus outputs for *any* input (accepted or not): every input entry
    gets at most one output. ``lost`` counts accepted ids with no output.
    """
    out.poll()
    acc = set(accepted)
    total = out.results + out.dead
    fig = Figures(
        test=test,
        sent=len(acc),
        results=sum(out.results[i] for i in acc),
        dead_lettered=sum(out.dead[i] for i in acc),
        duplicates=sum(n - 1 for n in total.values() if n > 1),
        lost=len(acc - set(total)),
        extra=extra,
    )
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{test}.json").write_text(json.dumps(asdict(fig), indent=2, default=str) + "\n")
    print(f"\nCHAOS {json.dumps(asdict(fig), default=str)}")
    return fig


def start_worker(env: dict[str, str], name: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """One ``bigru-worker`` process (one replica, consumer ``<name>-0``) logging JSON to ``log``."""
    with open(log, "ab") as f:
        return harness.start_worker(env, ["--worker-name", name, *args], log=f)


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, interval: float = 0.05) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval)


def live(r: redis.Redis, keys: Keys, *consumers: str) -> bool:
    """True when every named consumer has a heartbeat key (the replica is serving)."""
    return all(r.exists(keys.heartbeat(c)) for c in consumers)


def pending_of(r: redis.Redis, keys: Keys, consumer: str) -> list[str]:
    """Ids in ``consumer``'s pending list (shard 0)."""
    rows = r.xpending_range(keys.shard(0).windows, keys.group, "-", "+", 100_000, consumername=consumer)
    return [row["message_id"].decode() for row in rows]


def kill9_when(proc: subprocess.Popen[bytes], held: Callable[[], _H], what: str, tries: int = 200) -> _H:
    """SIGKILL ``proc`` at a moment ``held()`` is truthy (its consumer holds entries); returns that value.

    The process is frozen (SIGSTOP) first so that what it holds cannot change between checking
    and killing; if it holds nothing at that instant it is resumed and tried again.
    """
    for _ in range(tries):
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.02)  # a publish script already sent completes server-side
        got = held()
        if got:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return got
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"{what} never held a batch")


def kill9_holding_batch(proc: subprocess.Popen[bytes], r: redis.Redis, keys: Keys, consumer: str) -> list[str]:
    """SIGKILL ``proc`` at a moment its consumer holds entries on shard 0; returns the ids it held."""
    return kill9_when(proc, lambda: pending_of(r, keys, consumer), consumer)


def rss_kb(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB."""
    return {k: v for k, v in harness.memory_kib(pid).items() if k in ("VmRSS", "VmHWM")}


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM a worker and wait for it; SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode
