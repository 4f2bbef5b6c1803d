"""A CPU replica on the ONNX backend never imports torch: the checkpoint carries its graph.

The replica runs for real (``bigru-worker --burst`` in a child process against the test's Redis) and
reports, after serving, which torch modules its process loaded (the same check sees torch when an old
checkpoint makes the worker export); a hot reload stays torch-free too; a worker without torch
installed serves files with a graph and explains why it cannot serve one without; an old checkpoint
without a graph still serves (exporting one, which loads torch, and saying so); a checkpoint made for
another wire version is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from protocol.wire import WIRE_VERSION
from training.model.checkpoint import (
    CheckpointError,
    WireVersionError,
    from_bytes,
    load_checkpoint,
    save_checkpoint,
    to_bytes,
)
from training.model.checkpoint_file import load_served, parse
from worker.gate import Refused
from worker.gate import parse as gate_parse
from worker.onnx_backend import onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")

#: Runs the worker CLI in this process, then prints which torch modules the process holds.
REPLICA = """
import json, sys
from worker.cli import main
rc = main(["--burst"])
print(json.dumps({"rc": rc, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
"""


def _serve(env: dict[str, str], checkpoint: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one burst replica on ``checkpoint``; its report and its JSON log events."""
    env = {**env, "BIGRU_CHECKPOINT": str(checkpoint), "BIGRU_BURST_IDLE_MS": "300", "BIGRU_RELOAD": "false"}
    p = subprocess.run([sys.executable, "-c", REPLICA], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    events = []
    for line in p.stderr.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return json.loads(p.stdout.strip().splitlines()[-1]), events


def _publish(r: redis.Redis, prefix: str, n: int) -> list[str]:
    keys = Keys(prefix, prefix)
    return Producer(r, keys).publish_many([w.x for w in synthetic(n, 20, seed=5)], ids=[f"w{i}" for i in range(n)])


def _event(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in events if e.get("event") == name]
    assert found, f"no {name} event in {[e.get('event') for e in events]}"
    return found[0]


def test_checkpoint_file_carries_the_exported_graph(checkpoint_root: Path) -> None:
    from training.model.onnx import onnx_bytes

    served, full = load_served(checkpoint_root), load_checkpoint(checkpoint_root)
    assert served.graph is not None and served.graph == onnx_bytes(full)
    assert served.sha256 == full.sha256  # one file, one hash: the registry's sha256 covers the graph
    assert served.classes == full.classes and served.config == full.config and served.version == full.version
    assert served.golden_batch() is not None and served.wire_version == WIRE_VERSION


def test_onnx_replica_serves_without_importing_torch(r: redis.Redis, prefix: str, worker_env: dict[str, str],
                                                     checkpoint_root: Path) -> None:
    ids = _publish(r, prefix, 200)
    report, events = _serve(worker_env, checkpoint_root)
    assert report == {"rc": 0, "torch": []}, report
    ready = _event(events, "replica_ready")
    assert ready["backend"] == "onnx" and ready["precision"] in ("fp32", "int8")
    # precision auto: the int8 graph was built from the stored fp32 bytes and judged on the golden batch
    assert {"int8_serving", "int8_rejected_serving_fp32"} & {e.get("event") for e in events}
    results = ResultsReader(r, Keys(prefix, prefix)).collect(len(ids), timeout_s=30)
    assert sorted(res.input_id for res in results) == sorted(ids) and {res.status for res in results} == {"ok"}


#: A replica's hot reload, in this process: a newer version in the checkpoint root is fetched, gated and
#: swapped in; then prints which torch modules the process holds.
RELOAD = """
import json, sys
import redis
from training.model.checkpoint_file import set_latest_version
from worker.config import WorkerSettings
from worker.reload import ReloadingSource, initial_predictor
url, prefix, root, new = sys.argv[1:5]
s = WorkerSettings(redis_url=url, prefix=prefix, group=prefix, checkpoint=root, reload_interval_s=3600)
r = redis.Redis.from_url(url)
src = ReloadingSource(r, s, "test-0", initial_predictor(s, r))
old = src.current.version
set_latest_version(root, new)
queued = src.check()
src.poll()
print(json.dumps({"old": old, "queued": queued, "current": src.current.version, "backend": src.current.backend,
                  "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
"""


def test_hot_reload_on_the_onnx_path_stays_torch_free(redis_url: str, prefix: str, worker_env: dict[str, str],
                                                      checkpoint_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(checkpoint_root, root)
    ckpt = load_checkpoint(root)
    old, ckpt.version = ckpt.version, ""
    save_checkpoint(ckpt, root, set_latest=False)  # same weights, a newer version id
    p = subprocess.run([sys.executable, "-c", RELOAD, redis_url, prefix, str(root), ckpt.version], env=worker_env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report == {"old": old, "queued": ckpt.version, "current": ckpt.version, "backend": "onnx", "torch": []}


def test_old_checkpoint_without_graph_still_serves_and_says_why_it_is_slower(
        r: redis.Redis, prefix: str, worker_env: dict[str, str], checkpoint_root: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    save_checkpoint(load_checkpoint(checkpoint_root), old, graph=False)
    assert load_served(old).graph is None
    ids = _publish(r, prefix, 100)
    report, events = _serve(worker_env, old)
    assert report["rc"] == 0 and "torch" in report["torch"]  # the export needed torch: the check sees it
    warning = _event(events, "onnx_graph_missing_exporting")
    assert warning["level"] == "warning" and "torch" in warning["reason"]
    assert _event(events, "replica_ready")["backend"] == "onnx"
    assert len(ResultsReader(r, Keys(prefix, prefix)).collect(len(ids), timeout_s=30)) == len(ids)


#: As if torch were not installed (``import torch`` fails): serve a file with a graph, then try one without.
NO_TORCH = """
import json, sys
sys.modules["torch"] = None
import numpy as np
from training.model.checkpoint_file import load_served
from worker.backends import make_predictor
from worker.onnx_backend import BackendError
pred = make_predictor(load_served(sys.argv[1]), "cpu", "auto", 1, "auto")
probs = pred.predict([np.zeros((20, 1), np.float32), np.ones((7, 1), np.float32)])
try:
    make_predictor(load_served(sys.argv[2]), "cpu", "auto", 1, "auto")
    error = None
except BackendError as e:
    error = str(e)
print(json.dumps({"backend": pred.backend, "shape": list(probs.shape), "old_file": error}))
"""


def test_a_worker_without_torch_installed_serves_files_with_a_graph(worker_env: dict[str, str], checkpoint_root: Path,
                                                                   tmp_path: Path) -> None:
    save_checkpoint(load_checkpoint(checkpoint_root), tmp_path / "old", graph=False)
    p = subprocess.run([sys.executable, "-c", NO_TORCH, str(checkpoint_root), str(tmp_path / "old")], env=worker_env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["backend"] == "onnx" and report["shape"] == [2, 2]
    assert "stores no ONNX graph and exporting one needs torch" in report["old_file"]  # not a crash in an import


def test_checkpoint_of_another_wire_version_is_refused(checkpoint_root: Path, worker_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    ckpt.wire_version, ckpt.version = WIRE_VERSION + 1, ""
    data = to_bytes(ckpt)
    for read in (parse, from_bytes):
        with pytest.raises(WireVersionError, match=f"wire version {WIRE_VERSION + 1}"):
            read(data)
    assert issubclass(WireVersionError, CheckpointError)
    with pytest.raises(Refused) as e:
        gate_parse(data)
    assert e.value.reason == "incompatible_wire"
    (tmp_path / "f.safetensors").write_bytes(data)
    env = {**worker_env, "BIGRU_CHECKPOINT": str(tmp_path / "f.safetensors"), "BIGRU_RELOAD": "false"}
    p = subprocess.run([sys.executable, "-m", "worker.cli", "--burst"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "wire version" in p.stderr
