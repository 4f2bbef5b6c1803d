"""Serving backends: ONNX Runtime parity with torch, backend selection, and the CUDA path (marker gpu)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.model.checkpoint import Checkpoint, load_checkpoint
from worker import backends
from worker.backends import make_predictor
from worker.onnx_backend import BackendError, OnnxPredictor, onnx_available
from worker.predictor import DeviceError, TorchPredictor
from worker.types import Predictor

needs_onnx = pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _windows(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((t, 1)) * 2 + 0.3).astype(np.float32) for t in lengths]


@needs_onnx
def test_onnx_matches_torch_on_equal_and_unequal_lengths(checkpoint_root: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    onnx, ref = make_predictor(ckpt, "cpu", "onnx"), TorchPredictor(ckpt)
    assert onnx.backend == "onnx"
    for xs in (_windows([20] * 33), _windows([5, 20, 13, 40, 1, 20, 13], seed=1), _windows([7], seed=2)):
        got, want = onnx.predict(xs), ref.predict(xs)
        assert got.shape == want.shape == (len(xs), len(ckpt.classes))
        assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()


@needs_onnx
def test_onnx_matches_the_checkpoint_golden_batch(checkpoint_root: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    assert ckpt.golden_x is not None and ckpt.golden_lengths is not None
    xs = [x[:n] for x, n in zip(ckpt.golden_x, ckpt.golden_lengths)]
    got = make_predictor(ckpt, "cpu", "onnx").predict(xs)
    assert np.allclose(got, TorchPredictor(ckpt).predict(xs), atol=1e-5)


def _assert_serves_like_torch(pred: Predictor, ckpt: Checkpoint, atol: float) -> None:
    """``pred``'s probabilities equal the reference torch predictor's on mixed-length windows."""
    ref = TorchPredictor(ckpt)
    for xs in (_windows([20] * 17, seed=3), _windows([3, 20, 41, 1, 12], seed=4)):
        got, want = pred.predict(xs), ref.predict(xs)
        assert got.shape == want.shape == (len(xs), len(ckpt.classes))
        assert np.allclose(got, want, atol=atol), np.abs(got - want).max()
        assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)


@needs_onnx
def test_auto_serves_onnx_on_cpu_with_torchs_probabilities(checkpoint_root: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    pred = make_predictor(ckpt, "cpu", "auto")
    assert isinstance(pred, OnnxPredictor) and pred.precision == "fp32"  # make_predictor's default precision
    _assert_serves_like_torch(pred, ckpt, atol=1e-4)


def test_auto_falls_back_to_torch_without_onnxruntime(checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "onnx_available", lambda: False)
    monkeypatch.setattr(backends, "OnnxPredictor", None)  # building one now would fail loudly
    ckpt = load_checkpoint(checkpoint_root)
    pred = make_predictor(ckpt, "cpu", "auto")
    assert isinstance(pred, TorchPredictor)
    _assert_serves_like_torch(pred, ckpt, atol=0.0)
    with pytest.raises(BackendError, match="onnxruntime"):
        make_predictor(ckpt, "cpu", "auto", precision="int8")  # int8 needs ONNX: never silently fp32


def test_auto_falls_back_to_torch_when_export_fails(checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> None:
        raise BackendError("export failed")

    monkeypatch.setattr(backends, "onnx_available", lambda: True)
    monkeypatch.setattr(backends, "OnnxPredictor", broken)
    ckpt = load_checkpoint(checkpoint_root)
    pred = make_predictor(ckpt, "cpu", "auto")
    assert isinstance(pred, TorchPredictor)
    _assert_serves_like_torch(pred, ckpt, atol=0.0)
    with pytest.raises(BackendError, match="export failed"):
        make_predictor(ckpt, "cpu", "onnx")


@needs_onnx
def test_onnx_backend_serves_training_export_and_wraps_its_failures(checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.model.onnx
    from training.model.onnx import ExportError, onnx_bytes

    ckpt = load_checkpoint(checkpoint_root)
    assert OnnxPredictor(ckpt).graph == onnx_bytes(ckpt)

    def broken(c: object) -> bytes:
        raise ExportError("export of checkpoint x failed: boom")

    monkeypatch.setattr(training.model.onnx, "onnx_bytes", broken)
    with pytest.raises(BackendError, match="boom") as e:
        OnnxPredictor(ckpt)
    assert isinstance(e.value.__cause__, ExportError)
    assert isinstance(make_predictor(ckpt, "cpu", "auto"), TorchPredictor)


def test_onnx_backend_refuses_cuda(checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "resolve_device", lambda d: torch.device("cuda"))
    with pytest.raises(BackendError, match="CPU only"):
        make_predictor(load_checkpoint(checkpoint_root), "cuda", "onnx")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error(checkpoint_root: Path) -> None:
    with pytest.raises(DeviceError, match="cuda"):
        make_predictor(load_checkpoint(checkpoint_root), "cuda", "auto")


@pytest.mark.gpu
@needs_cuda
def test_cuda_predictor_matches_cpu_with_pinned_staging(checkpoint_root: Path) -> None:
    ckpt = load_checkpoint(checkpoint_root)
    gpu, cpu = make_predictor(ckpt, "cuda", "auto"), TorchPredictor(ckpt)
    assert gpu.backend == "torch" and str(gpu.device).startswith("cuda")
    for xs in (_windows([20] * 64), _windows([5, 20, 13, 40, 1], seed=1), _windows([20] * 3000, seed=2)):
        assert np.allclose(gpu.predict(xs), cpu.predict(xs), atol=1e-4)
    assert isinstance(gpu, TorchPredictor) and gpu._pinned is not None and gpu._pinned.is_pinned()


@pytest.mark.gpu
@needs_cuda
def test_cuda_staging_buffer_is_reused_across_batches(checkpoint_root: Path) -> None:
    pred = TorchPredictor(load_checkpoint(checkpoint_root), "cuda")
    pred.predict(_windows([20] * 8))
    buf = pred._pinned
    out = [pred.predict(_windows([20] * 8, seed=s)) for s in range(5)]
    assert pred._pinned is buf
    assert not np.allclose(out[0], out[1])  # each batch saw its own data, not a stale buffer
