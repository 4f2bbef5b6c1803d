"""Choosing the serving backend of a replica: torch (CPU or CUDA) or ONNX Runtime (CPU)."""

from __future__ import annotations

from typing import Literal

import structlog

from training.checkpoint import Checkpoint
from worker.onnx_backend import BackendError, OnnxPredictor, onnx_available
from worker.predictor import TorchPredictor, resolve_device

Backend = Literal["torch", "onnx", "auto"]
#: A predictor the worker can serve (both backends share the same attributes).
ServingPredictor = TorchPredictor | OnnxPredictor


def make_predictor(ckpt: Checkpoint, device: str = "cpu", backend: Backend = "auto", threads: int = 1) -> TorchPredictor | OnnxPredictor:
    """A warmed-up predictor for ``ckpt``.

    ``auto`` serves with ONNX Runtime on CPU when it is installed and the export works, and with
    torch otherwise (CUDA always uses torch). ``onnx`` on a CUDA device, or without onnxruntime,
    raises :class:`BackendError`.
    """
    dev = resolve_device(device)
    pred: TorchPredictor | OnnxPredictor
    if backend == "onnx" and dev.type != "cpu":
        raise BackendError(f"backend 'onnx' serves on CPU only, device is {dev}")
    if backend == "onnx" or (backend == "auto" and dev.type == "cpu" and onnx_available()):
        try:
            pred = OnnxPredictor(ckpt, threads=threads)
        except BackendError as e:
            if backend == "onnx":
                raise
            structlog.get_logger("worker").warning("onnx_backend_unavailable_using_torch", error=str(e))
            pred = TorchPredictor(ckpt, str(dev))
    else:
        pred = TorchPredictor(ckpt, str(dev))
    pred.warmup()
    return pred
