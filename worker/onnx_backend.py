"""ONNX Runtime serving backend for CPU: the checkpoint is exported at worker start, in memory.

ONNX cannot export ``pack_padded_sequence``, so the exported graph is the model's equal-length path
(normalization, BiGRU, pooling, head and softmax in one graph, dynamic batch and time axes). A batch
with unequal lengths is split into one run per distinct length; every window is then computed
exactly as it would be alone, which is what the packed torch path computes too.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from training.checkpoint import Checkpoint


class BackendError(RuntimeError):
    """A serving backend cannot be built (missing package, export failure)."""


def onnx_available() -> bool:
    """True when ``onnxruntime`` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(ckpt: Checkpoint, opset: int = 17) -> bytes:
    """The checkpoint's model as an ONNX graph ``x [B, T, F] raw -> probs [B, C]``."""
    import torch

    class _Serving(torch.nn.Module):
        mean: torch.Tensor
        inv_std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.model = ckpt.build_model("cpu")
            self.register_buffer("mean", torch.from_numpy(np.asarray(ckpt.mean, np.float32)))
            self.register_buffer("inv_std", torch.from_numpy((1.0 / np.asarray(ckpt.std)).astype(np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model((x - self.mean) * self.inv_std), dim=-1)

    module = _Serving().eval()
    example = torch.zeros((2, 8, ckpt.input_dim), dtype=torch.float32)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter maps nn.GRU to the ONNX GRU operator.
            # The annotation says path, but the exporter with dynamo=False writes to file objects too.
            torch.onnx.export(
                module, (example,), buf,  # type: ignore[arg-type]
                input_names=["x"], output_names=["probs"],
                dynamic_axes={"x": {0: "batch", 1: "time"}, "probs": {0: "batch"}},
                opset_version=opset, dynamo=False,
            )
    except Exception as e:  # the exporter raises many types (torch, onnx, onnxscript)
        raise BackendError(f"ONNX export of checkpoint {ckpt.version} failed: {type(e).__name__}: {e}") from e
    return buf.getvalue()


class OnnxPredictor:
    """Runs a checkpoint through ONNX Runtime on CPU for lists of [T_i, F] windows."""

    backend = "onnx"
    device = "cpu"

    def __init__(self, ckpt: Checkpoint, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("backend 'onnx' needs onnxruntime (pip install 'bigru-stream[onnx]')") from e
        self.checkpoint = ckpt
        self.version = ckpt.version
        self.classes = list(ckpt.classes)
        self.n_features = ckpt.input_dim
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning intra-op threads burn the cores that Redis and the other replicas need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session: Any = ort.InferenceSession(export_onnx(ckpt), opts, providers=["CPUExecutionProvider"])
        except BackendError:
            raise
        except Exception as e:  # onnxruntime raises its own error types
            raise BackendError(f"onnxruntime refused the exported graph: {e}") from e

    def _run(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {"x": x})[0]
        return out

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [B, C] for the windows ``xs`` (one run per distinct length)."""
        t0 = xs[0].shape[0]
        if all(x.shape[0] == t0 for x in xs):
            return self._run(np.stack(xs))
        groups: dict[int, list[int]] = {}
        for i, x in enumerate(xs):
            groups.setdefault(x.shape[0], []).append(i)
        out = np.empty((len(xs), len(self.classes)), dtype=np.float32)
        for idx in groups.values():
            out[idx] = self._run(np.stack([xs[i] for i in idx]))
        return out

    def warmup(self) -> None:
        """One run so the first real batch does not pay for lazy initialisation."""
        self.predict([np.zeros((8, self.n_features), dtype=np.float32)])
