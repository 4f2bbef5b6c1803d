"""Helpers of the operations tests: worker processes, readiness, scraping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from bench import harness
from protocol.keys import Keys
from protocol.redisconn import connect
from worker.health import check


def worker_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``bigru-worker *args`` run to completion (text output captured)."""
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """``bigru-worker *args`` in its own process group (output discarded)."""
    return harness.start_worker(env, args, new_session=True)


def wait_ready(url: str, keys: Keys, consumers: Iterable[str], procs: Iterable[subprocess.Popen[bytes]] = (),
               timeout: float = 180.0) -> None:
    """Block until every consumer has a heartbeat (raises if a process exits or time runs out)."""
    r, names, procs = connect(url), list(consumers), list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker exited with {p.returncode} before becoming ready")
        ok, msg = check(r, keys, names)
        if ok:
            return
        time.sleep(0.2)
    raise TimeoutError(f"workers not ready after {timeout}s: {msg}")


def stop(*procs: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM each process and wait; SIGKILL the process group of what does not exit.

    Only the leader gets SIGTERM: a supervisor forwards it, and a replica that got a second
    SIGTERM (group + supervisor) would exit at once, skipping its clean shutdown.
    """
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``/metrics`` of a replica, as sample name -> [(labels, value)]."""
    return parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition as sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))
