"""The default model's random-convolution branch served end to end: producer -> bigru-worker --burst (ONNX, fp32
and int8) -> results whose labels are the trainer's own, on a real redis-server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from producer.client import Producer
from producer.results import ResultsReader
from protocol.keys import Keys
from training.model.checkpoint import save_checkpoint
from training.model.data import stratified_split, synthetic
from training.run import default_model_config
from training.train import TrainConfig, fit, predict, to_tensors
from worker.onnx_backend import onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")


@pytest.fixture(scope="module")
def rocket_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small default-architecture model with the branch (840 features) on the synthetic task."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rocket")
    ds = synthetic(600, 20, seed=3)
    tr, va = stratified_split(ds.y, 0.2, 3)
    cfg = default_model_config(1, 2, 20, {"hidden": 8, "channels": 8, "rocket": 840})
    save_checkpoint(fit(ds.subset(tr), ds.subset(va), cfg, TrainConfig(epochs=3, seed=3)).checkpoint, root)
    return root


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_worker_serves_the_branch_with_the_trainers_labels(r: redis.Redis, prefix: str, worker_env: dict[str, str],
                                                            rocket_root: Path, precision: str) -> None:
    from training.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(rocket_root)
    assert ckpt.config.rocket == 840
    test = synthetic(200, 20, seed=11)
    x, lengths, _ = to_tensors(test, ckpt.mean, ckpt.std)
    torch_labels = predict(ckpt.build_model(), x, lengths).argmax(-1).numpy()
    keys = Keys(prefix, prefix)
    ids = Producer(r, keys).publish_many([w for w in test.X], ids=[f"w{i}" for i in range(len(test))])
    env = dict(worker_env, BIGRU_CHECKPOINT=str(rocket_root), BIGRU_BACKEND="onnx", BIGRU_PRECISION=precision)
    out = subprocess.run([sys.executable, "-m", "worker.cli", "--burst"], env=env, capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    results = {res.input_id: res for res in ResultsReader(r, keys).collect(len(ids), timeout_s=60)}
    assert set(results) == set(ids)
    served = np.array([int(results[i].class_name) for i in ids])
    agree = float((served == torch_labels).mean())
    # fp32 is the same graph; int8 quantizes the trunk only (the branch stays fp32), so labels may move a little
    assert agree == 1.0 if precision == "fp32" else agree >= 0.95, agree
    accuracy = float((served == test.y).mean())
    assert accuracy > 0.8, accuracy


def test_a_batch_is_run_in_chunks_that_bound_the_branchs_memory_and_change_nothing(rocket_root: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from training.model.checkpoint_file import load_served
    from training.model.onnx import onnx_session
    from worker import onnx_backend

    assert onnx_backend.windows_per_run(0, 1, 20) is None  # no branch: one run
    assert onnx_backend.windows_per_run(10_000, 1, 20) == onnx_backend.ACTIVATION_BUDGET // (4 * 10_000 * 20)
    assert onnx_backend.windows_per_run(10_000, 4, 2000) == onnx_backend.MIN_RUN  # long windows: the floor
    served = load_served(rocket_root)
    pred = onnx_backend.OnnxPredictor(served)
    xs = [w for w in synthetic(100, 20, seed=5).X]
    runs: list[int] = []
    real = pred.session

    class Counting:
        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            runs.append(len(feeds["x"]))
            out: list[np.ndarray] = real.run(names, feeds)
            return out

    monkeypatch.setattr(onnx_backend, "ACTIVATION_BUDGET", 4 * 840 * 20 * 16)  # 16 windows per run
    monkeypatch.setattr(pred, "session", Counting())
    got = pred.predict(xs)
    assert runs == [16] * 6 + [4]
    assert served.graph is not None
    whole = onnx_session(served.graph).run(["probs"], {"x": np.stack(xs)})[0]
    assert np.allclose(got, whole, atol=1e-6)
