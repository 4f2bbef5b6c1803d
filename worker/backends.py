"""Choosing the serving backend of a replica: torch (CPU or CUDA) or ONNX Runtime (CPU), and its precision.

Only the torch backend imports torch (:mod:`worker.predictor`, imported here when it is chosen): a
replica on CPU whose checkpoint carries its ONNX graph serves with ``onnx`` (or ``auto`` with
onnxruntime installed) without ever loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias

import structlog

from training.model.checkpoint_file import CheckpointMeta
from training.model.device import resolve_device
from worker.config import default
from worker.onnx_backend import BackendError, OnnxPredictor, Precision, onnx_available

if TYPE_CHECKING:
    from worker.predictor import TorchPredictor

Backend = Literal["torch", "onnx", "auto"]
#: A predictor the worker can serve (both backends share the same attributes).
ServingPredictor: TypeAlias = "TorchPredictor | OnnxPredictor"


def torch_predictor(ckpt: CheckpointMeta, device: str, threads: int) -> TorchPredictor:
    """The torch backend (imports torch): ``threads`` > 0 sets torch's intra-op threads.

    Raises :class:`BackendError` when torch is not installed (a worker installed with the ``serve`` extra).
    """
    try:
        from worker.predictor import TorchPredictor
    except ImportError as e:
        raise BackendError(f"the torch backend needs torch (pip install 'bigru-stream[model]'): {e}") from e

    return TorchPredictor(ckpt, device, threads)


def make_predictor(ckpt: CheckpointMeta, device: str = "cpu", backend: Backend = "auto", threads: int = 1,
                   precision: Precision = "fp32", max_drop: float = default("reload_max_drop")) -> ServingPredictor:
    """A warmed-up predictor for ``ckpt``; its ``precision`` attribute says what it serves.

    ``auto`` serves with ONNX Runtime on CPU when it is installed and the graph works, and with
    torch otherwise (CUDA always uses torch). ``onnx`` on a CUDA device, or without onnxruntime,
    raises :class:`BackendError`. ``threads`` is the intra-op thread count of whichever runtime serves.

    ``precision`` (the worker's ``BIGRU_PRECISION``; this function's default is exact fp32): ``auto``
    lets the ONNX backend serve its int8 graph when the golden-batch accuracy stays within ``max_drop``
    of fp32's (see :class:`~worker.onnx_backend.OnnxPredictor`); torch always serves fp32 then. ``int8``
    is served by the ONNX backend only: with backend ``torch``, on CUDA, or when ``auto`` would fall
    back to torch, it raises :class:`BackendError` rather than silently serving fp32.
    """
    dev = str(resolve_device(device))
    on_cpu = dev.split(":")[0] == "cpu"
    pred: ServingPredictor
    if backend == "onnx" and not on_cpu:
        raise BackendError(f"backend 'onnx' serves on CPU only, device is {dev}")
    if precision == "int8" and (backend == "torch" or not on_cpu):
        raise BackendError(f"precision 'int8' is served by the onnx backend on CPU only (backend {backend}, "
                           f"device {dev}); torch serves fp32: use precision 'fp32' or 'auto'")
    if backend == "onnx" or (backend == "auto" and on_cpu and onnx_available()):
        try:
            pred = OnnxPredictor(ckpt, threads=threads, precision=precision, max_drop=max_drop)
        except BackendError as e:
            if backend == "onnx" or precision == "int8":
                raise
            structlog.get_logger("worker").warning("onnx_backend_unavailable_using_torch", error=str(e))
            try:
                pred = torch_predictor(ckpt, dev, threads)
            except BackendError as e2:
                raise BackendError(f"onnx backend: {e}; torch backend: {e2}") from e2
    elif precision == "int8":
        raise BackendError("precision 'int8' needs the onnx backend, and onnxruntime is not installed")
    else:
        pred = torch_predictor(ckpt, dev, threads)
    pred.warmup()
    return pred
