"""ONNX Runtime serving backend for CPU: the checkpoint is exported at worker start, in memory.

The graph is :func:`training.export.onnx_bytes`, the same bytes ``bigru-train export --onnx`` writes to
``model.onnx`` and checks for parity, run in a session built by :func:`training.export.onnx_session`.
ONNX cannot export ``pack_padded_sequence``, so the exported graph is the model's equal-length path
(normalization, model and softmax in one graph, dynamic batch and time axes). A batch with unequal
lengths is split into one run per distinct length; every window is then computed exactly as it would
be alone, which is what the packed torch path computes too.
"""

from __future__ import annotations

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


class OnnxPredictor:
    """Runs a checkpoint through ONNX Runtime on CPU for lists of [T_i, F] windows.

    ``graph`` holds the served ONNX bytes (identical to ``bigru-train export --onnx``'s ``model.onnx``).
    """

    backend = "onnx"
    device = "cpu"

    def __init__(self, ckpt: Checkpoint, threads: int = 1) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise BackendError("backend 'onnx' needs onnxruntime (pip install 'bigru-stream[onnx]')") from e
        from training.export import ExportError, onnx_bytes, onnx_session

        self.checkpoint = ckpt
        self.version = ckpt.version
        self.classes = list(ckpt.classes)
        self.n_features = ckpt.input_dim
        try:
            self.graph = onnx_bytes(ckpt)
        except ExportError as e:
            raise BackendError(str(e)) from e
        try:
            self.session: Any = onnx_session(self.graph, threads)
        except Exception as e:  # onnxruntime raises its own error types
            raise BackendError(f"onnxruntime refused the exported graph: {e}") from e

    def _run(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(["probs"], {"x": x})[0]
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
