"""The one ONNX exporter: the graph a worker serves, made from a checkpoint.

:func:`onnx_bytes` is the only ONNX export in the project: :func:`training.model.checkpoint.save_checkpoint`
stores its bytes in the checkpoint file, ``bigru-train export --onnx`` writes them to ``model.onnx`` and
checks :func:`parity` on a session built from them, and the worker's ONNX backend
(:class:`worker.onnx_backend.OnnxPredictor`) serves the stored bytes (exporting them only for files
written before graphs were stored). Importing this module does not import torch (the exporter and
:func:`parity` do), so the worker's ONNX path and :mod:`training.model.quantize` stay torch-free. The graph takes raw
windows ``x`` [batch, time, F] (both axes dynamic), applies the checkpoint's normalization and
returns ``logits`` and ``probs``. Every window of one call must have the same length (ONNX has no
packed sequences); batch unequal windows by length, or run them one by one.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from training.model.network import RawInputModel

#: ONNX opset of the served graph (the TorchScript exporter maps nn.GRU/nn.LSTM onto ONNX's GRU/LSTM ops).
OPSET = 17
INPUT = "x"
OUTPUTS = ("logits", "probs")
RANDOM_SHAPES = ((1, 1), (1, 20), (3, 7), (8, 20), (32, 57), (5, 150))


class ExportError(RuntimeError):
    """The checkpoint's model cannot be exported to ONNX."""


@runtime_checkable
class Exportable(Protocol):
    """What the exporter needs of a checkpoint: its weights as a module and its normalization
    (:class:`training.model.checkpoint.Checkpoint` is one)."""

    version: str
    mean: np.ndarray
    std: np.ndarray

    @property
    def input_dim(self) -> int:
        """Number of features F of a window."""

    def build_model(self, device: str = "cpu") -> nn.Module:
        """The classifier with the checkpoint's weights, in eval mode."""


def raw_input_model(ckpt: Exportable, model: nn.Module | None = None) -> RawInputModel:
    """Normalization + ``ckpt``'s classifier (or ``model``) in one module: raw [B, T, F] -> (logits, probs)."""
    from training.model.network import RawInputModel

    return RawInputModel(model if model is not None else ckpt.build_model("cpu"), ckpt.mean, ckpt.std)


def onnx_bytes(ckpt: Exportable) -> bytes:
    """The served ONNX graph of ``ckpt``: raw ``x`` [batch, time, F] -> ``logits``, ``probs`` [batch, C].

    TorchScript-based exporter (``dynamo=False``), opset :data:`OPSET`: recurrent layers become ONNX
    GRU/LSTM operators, which onnxruntime runs fast; the bytes are deterministic for a checkpoint and
    the export takes well under a second. (The dynamo exporter measured the same ONNX Runtime forward
    time, but its bytes differ run to run and it takes seconds; torch deprecates the TorchScript
    exporter, and the parity tests say when switching becomes necessary.) Raises :class:`ExportError`
    when the exporter fails.
    """
    import torch

    wrapper = raw_input_model(ckpt).eval()
    example = torch.zeros((2, 8, ckpt.input_dim), dtype=torch.float32)
    axes = {INPUT: {0: "batch", 1: "time"}, **{name: {0: "batch"} for name in OUTPUTS}}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The annotation says path; with dynamo=False the exporter writes to file objects too.
            torch.onnx.export(wrapper, (example,), buf,  # type: ignore[arg-type]
                              input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
    except Exception as e:  # the exporter raises many types (torch, onnx, onnxscript)
        raise ExportError(f"ONNX export of checkpoint {ckpt.version} failed: {type(e).__name__}: {e}") from e
    return buf.getvalue()


def onnx_session(graph: bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session for ``graph`` with the worker's settings (``threads`` intra-op threads).

    Raises ``ImportError`` without onnxruntime and onnxruntime's own errors for a graph it refuses.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads burn the cores that Redis and the other replicas need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])


def _groups_by_length(windows: list[np.ndarray]) -> list[np.ndarray]:
    by_len: dict[int, list[np.ndarray]] = {}
    for w in windows:
        by_len.setdefault(w.shape[0], []).append(w)
    return [np.stack(v).astype(np.float32) for v in by_len.values()]


def parity(ckpt: Exportable, session: Any, real: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Max |onnx - torch| over logits, on random windows and on ``real`` windows (grouped by length)."""
    import torch

    wrapper = raw_input_model(ckpt).eval()
    rng = np.random.default_rng(seed)
    rand = [(rng.standard_normal((b, t, ckpt.input_dim)) * ckpt.std + ckpt.mean).astype(np.float32) for b, t in RANDOM_SHAPES]

    def max_diff(batches: list[np.ndarray]) -> float:
        worst = 0.0
        for xb in batches:
            with torch.inference_mode():
                ref = wrapper(torch.from_numpy(xb))[0].numpy()
            got = session.run(["logits"], {INPUT: xb})[0]
            worst = max(worst, float(np.abs(got - ref).max()))
        return worst

    real_batches = _groups_by_length(real)
    return {
        "random_max_abs_diff": max_diff(rand),
        "random_shapes": [list(s) for s in RANDOM_SHAPES],
        "real_max_abs_diff": max_diff(real_batches) if real_batches else None,
        "real_windows": len(real),
    }
