"""Choosing the serving backend of a replica: torch (CPU or CUDA) or ONNX Runtime (CPU), and its precision."""

from __future__ import annotations

from typing import Literal

import structlog

from training.checkpoint import Checkpoint
from worker.onnx_backend import BackendError, OnnxPredictor, Precision, onnx_available
from worker.predictor import TorchPredictor, resolve_device

Backend = Literal["torch", "onnx", "auto"]
#: A predictor the worker can serve (both backends share the same attributes).
ServingPredictor = TorchPredictor | OnnxPredictor


def make_predictor(ckpt: Checkpoint, device: str = "cpu", backend: Backend = "auto", threads: int = 1,
                   precision: Precision = "fp32", max_drop: float = 0.02) -> TorchPredictor | OnnxPredictor:
    """A warmed-up predictor for ``ckpt``; its ``precision`` attribute says what it serves.

    ``auto`` serves with ONNX Runtime on CPU when it is installed and the export works, and with
    torch otherwise (CUDA always uses torch). ``onnx`` on a CUDA device, or without onnxruntime,
    raises :class:`BackendError`.

    ``precision`` (the worker's ``BIGRU_PRECISION``; this function's default is exact fp32): ``auto``
    lets the ONNX backend serve its int8 graph when the golden-batch accuracy stays within ``max_drop``
    of fp32's (see :class:`~worker.onnx_backend.OnnxPredictor`); torch always serves fp32 then. ``int8``
    is served by the ONNX backend only: with backend ``torch``, on CUDA, or when ``auto`` would fall
    back to torch, it raises :class:`BackendError` rather than silently serving fp32.
    """
    dev = resolve_device(device)
    pred: TorchPredictor | OnnxPredictor
    if backend == "onnx" and dev.type != "cpu":
        raise BackendError(f"backend 'onnx' serves on CPU only, device is {dev}")
    if precision == "int8" and (backend == "torch" or dev.type != "cpu"):
        raise BackendError(f"precision 'int8' is served by the onnx backend on CPU only (backend {backend}, "
                           f"device {dev}); torch serves fp32: use precision 'fp32' or 'auto'")
    if backend == "onnx" or (backend == "auto" and dev.type == "cpu" and onnx_available()):
        try:
            pred = OnnxPredictor(ckpt, threads=threads, precision=precision, max_drop=max_drop)
        except BackendError as e:
            if backend == "onnx" or precision == "int8":
                raise
            structlog.get_logger("worker").warning("onnx_backend_unavailable_using_torch", error=str(e))
            pred = TorchPredictor(ckpt, str(dev))
    elif precision == "int8":
        raise BackendError("precision 'int8' needs the onnx backend, and onnxruntime is not installed")
    else:
        pred = TorchPredictor(ckpt, str(dev))
    pred.warmup()
    return pred
