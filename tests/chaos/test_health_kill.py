"""Health, the chaos part: ready only after the warm-up, stale after a kill -9 (the rest is
tests/integration/test_health_status.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from protocol.keys import Keys
from tests.ops_helpers import worker_cli as _cli
from worker.health import check
from worker.status import snapshot

# Runs the real CLI with the predictor's warm-up slowed down and writing a marker when done.
_SLOW_WARMUP = """
import sys, time
import worker.predictor as p
orig = p.TorchPredictor.warmup
def warmup(self):
    time.sleep(3)
    orig(self)
    open(sys.argv[1], "w").write("warm")
p.TorchPredictor.warmup = warmup
from worker.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.chaos
def test_ready_only_after_warmup_and_stale_after_kill(
    r: redis.Redis, prefix: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    keys = Keys(prefix, prefix)
    marker = tmp_path / "warm"
    # The slowed-down warm-up is the torch backend's.
    env = dict(worker_env, BIGRU_HEARTBEAT_TTL_S="2", BIGRU_HEARTBEAT_INTERVAL_S="0.5", BIGRU_BACKEND="torch")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WARMUP, str(marker), "--worker-name", "hc"], env=env,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    seen_cold = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            warm_before = marker.exists()
            ok, _ = check(r, keys, ["hc-0"])
            if ok:
                assert warm_before or marker.exists(), "ready before the model was warmed up"
                break
            seen_cold += not warm_before
            assert proc.poll() is None
            time.sleep(0.05)
        else:
            pytest.fail("worker never became ready")
        assert marker.exists() and seen_cold > 0
        assert _cli(env, "--check", "--worker-name", "hc").returncode == 0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(2.5)  # > heartbeat TTL
        out = _cli(env, "--check", "--worker-name", "hc")
        assert out.returncode == 1 and "hc-0" in out.stdout
        assert [c["alive"] for c in snapshot(r, keys)["consumers"] if c["name"] == "hc-0"] == [False]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
