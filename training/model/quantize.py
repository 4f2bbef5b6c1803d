"""The served int8 ONNX graph: static quantization of the fp32 graph's convolutions, calibrated on the golden batch.

:func:`onnx_int8_bytes` is the only source of the reduced-precision graph: the worker's ONNX backend
(``BIGRU_PRECISION=auto|int8``, :class:`worker.onnx_backend.OnnxPredictor`) and ``python -m bench.model
--precision int8`` both serve its bytes. It takes :func:`training.model.onnx.onnx_bytes` (same input and
outputs, dynamic batch and time axes) and quantizes it with onnxruntime's ``quantize_static``:

* **Conv only** (``QDQ`` format, per-channel int8 weights, uint8 activations, MinMax ranges): ONNX
  Runtime fuses each DequantizeLinear -> Conv -> QuantizeLinear into a QLinearConv at session start.
  The GRU and the head stay fp32: ORT has no int8 GRU kernel (only ``DynamicQuantizeLSTM``), and the
  head is one small Gemm whose int8 version measured no faster.
* **Static, not dynamic**: ``quantize_dynamic`` turns Conv into ConvInteger, which this CPU ran 0.6x
  as fast as fp32 (ranges computed per batch plus a slow kernel); static QLinearConv ran 1.2x (batch 1)
  to 1.6x (batch 64) as fast. Static needs calibration windows: the checkpoint's golden batch, so a
  checkpoint without one has no int8 graph (:class:`QuantizeError`). The activation ranges are fixed,
  so a window's probabilities do not depend on the batch it is served in.

Measurements and the variants tried: ``results/quantize.md`` (``python -m bench.quantize_variants``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from training.model.checkpoint_file import CheckpointMeta
from training.model.onnx import INPUT, Exportable, ExportError, onnx_bytes

#: ONNX op types quantized in the served int8 graph.
INT8_OPS = ("Conv",)
#: Name scopes of the fp32 graph left in fp32: the random-convolution branch compares each output with
#: fitted biases, and an int8 rounding of either flips those comparisons (:mod:`training.model.rocket`).
FP32_SCOPES = ("/rocket/",)
#: Node types that mark a graph as quantized (what ORT serves as int8 after fusing QDQ pairs).
QUANT_NODES = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QGemm")


class QuantizeError(ExportError):
    """The checkpoint's int8 graph cannot be built (no golden batch to calibrate on, or the quantizer failed)."""


#: Windows per calibration batch. MinMax calibration takes the range over all batches, so the chunk
#: size does not change the graph; it bounds the work buffers onnxruntime keeps on the building
#: thread (a worker's reload checker thread) for good.
CALIBRATION_CHUNK = 64


def calibration_batches(ckpt: CheckpointMeta) -> list[np.ndarray]:
    """The golden batch grouped by window length, in [n <= 64, T, F] float32 arrays."""
    by_len: dict[int, list[np.ndarray]] = {}
    for w in ckpt.golden_windows():
        by_len.setdefault(w.shape[0], []).append(w)
    return [np.stack(v[i: i + CALIBRATION_CHUNK]).astype(np.float32)
            for _, v in sorted(by_len.items()) for i in range(0, len(v), CALIBRATION_CHUNK)]


@contextlib.contextmanager
def _quantizer_logging() -> Iterator[None]:
    """Forward the quantizer's stdlib log records to structlog while it runs.

    onnxruntime's quantizer logs through ``logging.warning()``, which on a root logger without handlers
    (the worker's: it logs with structlog) installs a plain-text stderr handler for the whole process.
    A handler on the root logger for the duration prevents that; records from the root and onnx
    loggers become ``int8_quantizer_message`` events.
    """
    log = structlog.get_logger("quantize")

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name == "root" or record.name.startswith("onnx"):
                log.warning("int8_quantizer_message", message=record.getMessage()[:300])

    root, handler = logging.getLogger(), Forward(logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _import_ort_tools_without_torch() -> None:
    """Import ``onnxruntime.tools`` with torch hidden, unless torch is loaded already.

    ``quant_pre_process`` imports ``onnxruntime.tools``, whose ``__init__`` imports torch whenever it is
    installed (for a PyTorch export helper the quantizer never uses): a torch-free ONNX replica building
    its int8 graph would load torch (~200 MB of RSS) for nothing. While that one import runs,
    ``sys.modules["torch"]`` is None, which ``importlib.util.find_spec`` reports as not installed; the
    entry is removed right after. (A thread importing torch in that instant would get an ImportError;
    in a worker the model checker thread is the only one that could.)
    """
    if "onnxruntime.tools" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import onnxruntime.tools  # noqa: F401
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def _inline_shared_initializers(model: Any) -> None:
    """Replace each Identity of an initializer by a copy of it, in place.

    The exporter stores equal tensors once and reaches the repeats through Identity nodes (e.g. the
    folded BatchNorm biases of an untrained model, all zeros); the quantizer needs a Conv's bias to be
    an initializer, or it leaves that Conv in fp32.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def onnx_int8_bytes(ckpt: CheckpointMeta, fp32: bytes | None = None) -> bytes:
    """The served int8 graph of ``ckpt``: :func:`~training.model.onnx.onnx_bytes` with int8 convolutions.

    ``fp32`` is that graph when the caller already has it; else it is the graph stored in the file
    (a :class:`~training.model.checkpoint_file.ServedCheckpoint`'s ``graph``), else it is exported here
    (which imports torch and needs a checkpoint with weights). With the fp32 bytes at hand nothing here
    imports torch. Calibration runs the golden batch through the fp32 graph (ORT on CPU) and takes each
    Conv input's min/max; the bytes are deterministic for a checkpoint. The fp32 graph first gets its
    shared initializers inlined and goes through onnxruntime's quantization pre-processing, shape inference only (no graph optimization;
    it also marks the graph pre-processed, which quantize_static otherwise warns about).
    Raises :class:`QuantizeError` without a golden batch or when onnxruntime's quantizer fails, and
    ``ImportError`` without onnxruntime/onnx.
    """
    batches = calibration_batches(ckpt)
    if not batches:
        raise QuantizeError(f"checkpoint {ckpt.version} has no golden batch to calibrate the int8 graph on")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Golden(CalibrationDataReader):  # onnxruntime is untyped (Any base)
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {INPUT: x}

    _import_ort_tools_without_torch()
    graph = fp32 if fp32 is not None else getattr(ckpt, "graph", None)
    if graph is None:
        if not isinstance(ckpt, Exportable):
            raise QuantizeError(f"checkpoint {ckpt.version} has neither a stored fp32 graph nor weights to export one")
        graph = onnx_bytes(ckpt)
    try:
        with tempfile.TemporaryDirectory(prefix="bigru-int8-") as tmp, _quantizer_logging():
            pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            model = onnx.load_from_string(graph)
            _inline_shared_initializers(model)
            quant_pre_process(model, pre, skip_optimization=True)
            excluded = [n.name for n in model.graph.node if any(scope in n.name for scope in FP32_SCOPES)]
            quantize_static(str(pre), str(out), Golden(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(INT8_OPS), per_channel=True, nodes_to_exclude=excluded,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            return out.read_bytes()
    except Exception as e:  # onnx/onnxruntime raise many types
        raise QuantizeError(f"int8 quantization of checkpoint {ckpt.version} failed: {type(e).__name__}: {e}") from e


def quantized_ops(graph: bytes) -> dict[str, int]:
    """Counts of the quantization node types in ``graph`` (empty for an fp32 graph)."""
    import onnx

    counts: dict[str, int] = {}
    model: Any = onnx.load_from_string(graph)
    for node in model.graph.node:
        if node.op_type in QUANT_NODES:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
