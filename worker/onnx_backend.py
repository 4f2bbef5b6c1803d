"""ONNX Runtime serving backend for CPU: serves the fp32 graph stored in the checkpoint file, without torch.

The graph is :func:`training.model.onnx.onnx_bytes`, stored in the file at save time (the same bytes
``bigru-train export --onnx`` writes to ``model.onnx`` and checks for parity), run in a session built
by :func:`training.model.onnx.onnx_session`. A replica that reads its checkpoint with
:func:`training.model.checkpoint_file.parse` serves it with numpy, safetensors and onnxruntime only: torch is
never imported. A file written before graphs were stored has none: the graph is then exported at start
(importing torch; warning ``onnx_graph_missing_exporting``), and so is the graph of an in-memory
:class:`training.model.checkpoint.Checkpoint` (its weights are the truth).

ONNX cannot export ``pack_padded_sequence``, so the exported graph is the model's equal-length path
(normalization, model and softmax in one graph, dynamic batch and time axes). A batch with unequal
lengths is split into one run per distinct length; every window is then computed exactly as it would
be alone, which is what the packed torch path computes too.

Precision (``BIGRU_PRECISION``): ``fp32`` serves that graph. ``auto`` and ``int8`` also load the int8
graph stored in the file (``onnx.int8``; a file written before it was stored has none, and the graph is
then built at start by :func:`training.model.quantize.onnx_int8_bytes`, int8 convolutions calibrated on the
golden batch) and run the checkpoint's golden batch through both sessions. ``auto`` serves int8 only when its golden
accuracy is at least fp32's minus ``max_drop`` (``BIGRU_RELOAD_MAX_DROP``), and fp32 otherwise: when
int8 falls short (a warning names both accuracies), when the checkpoint has no golden batch, or when
quantization fails. ``int8`` serves int8 even over the drop (with a warning) and refuses to start
(:class:`BackendError`) when there is no int8 graph (no golden batch, quantizer failure).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import structlog

from training.model.checkpoint_file import CheckpointMeta, ServedCheckpoint
from worker.config import default
from worker.golden import ServesCheckpoint, golden_accuracy

#: Requested serving precision (the ``precision`` worker setting).
Precision = Literal["fp32", "int8", "auto"]

#: The activation memory (bytes) one ONNX run may take for the random-convolution branch: a batch is run in
#: chunks of at most that many windows, so a replica's memory does not grow with ``max_batch``. The branch
#: holds windows x features x steps floats at once (51 MB for 64 windows of 20 steps with 10 000 features,
#: kept by ONNX Runtime's arena for the replica's life); its cost per window is flat in the batch size, so
#: chunks cost no throughput (measured on a quiet 2-core machine: 64 windows at T = 20 took 31.4 ms in one run,
#: 32.6 / 31.8 / 30.5 ms in runs of 32 / 16 / 8).
ACTIVATION_BUDGET = 8 << 20
#: The fewest windows a chunk holds.
MIN_RUN = 8


def windows_per_run(rocket_features: int, stride: int, steps: int) -> int | None:
    """How many windows of ``steps`` one ONNX run takes (None: no limit, the model has no branch)."""
    if rocket_features <= 0:
        return None
    return max(MIN_RUN, ACTIVATION_BUDGET // (4 * rocket_features * max(1, -(-steps // stride))))


class BackendError(RuntimeError):
    """A serving backend cannot be built (missing package, export failure)."""


def onnx_available() -> bool:
    """True when ``onnxruntime`` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxPredictor(ServesCheckpoint):
    """Runs a checkpoint through ONNX Runtime on CPU for lists of [T_i, F] windows.

    ``graph`` holds the served ONNX bytes: with ``precision`` ``fp32`` (what it serves, ``fp32`` or
    ``int8``) they are identical to ``bigru-train export --onnx``'s ``model.onnx``; with ``int8`` they are
    :func:`training.model.quantize.onnx_int8_bytes`. ``golden_accuracy`` holds the golden-batch accuracy of
    each graph that was compared (empty when no comparison ran).
    """

    backend = "onnx"
    device = "cpu"

    def __init__(self, ckpt: CheckpointMeta, threads: int = 1, precision: Precision = "fp32",
                 max_drop: float = default("reload_max_drop")) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise BackendError("backend 'onnx' needs onnxruntime (pip install 'bigru-stream[onnx]')") from e

        self.checkpoint = ckpt
        self.version = ckpt.version
        self.classes = list(ckpt.classes)
        self.n_features = ckpt.input_dim
        self.threads = threads
        self.precision: Literal["fp32", "int8"] = "fp32"
        self.golden_accuracy: dict[str, float] = {}
        self.graph = self._fp32_graph(ckpt)
        self.session: Any = self._session(self.graph)
        if precision != "fp32":
            self._choose_int8(precision == "int8", max_drop)

    @staticmethod
    def _fp32_graph(ckpt: CheckpointMeta) -> bytes:
        """The stored graph of a file read without torch; else the one exported from the weights (torch)."""
        if isinstance(ckpt, ServedCheckpoint) and ckpt.graph is not None:
            return ckpt.graph
        try:
            from training.model.checkpoint import CheckpointError, as_torch
        except ImportError as e:  # torch (or safetensors.torch) is not installed
            raise BackendError(f"checkpoint {ckpt.version} stores no ONNX graph and exporting one needs torch: {e}") from e
        from training.model.onnx import ExportError, onnx_bytes

        if isinstance(ckpt, ServedCheckpoint):
            structlog.get_logger("worker").warning(
                "onnx_graph_missing_exporting", version=ckpt.version,
                reason="checkpoint written before files stored their ONNX graph: exporting it at start, which "
                       "imports torch (slower start-up, larger replica); save it again to store one")
        try:
            return onnx_bytes(as_torch(ckpt))
        except (ExportError, CheckpointError) as e:
            raise BackendError(str(e)) from e

    def _session(self, graph: bytes) -> Any:
        from training.model.onnx import onnx_session

        try:
            return onnx_session(graph, self.threads)
        except Exception as e:  # onnxruntime raises its own error types
            raise BackendError(f"onnxruntime refused the exported graph: {e}") from e

    def _choose_int8(self, force: bool, max_drop: float) -> None:
        """Build the int8 session and serve it when its golden accuracy allows (always when ``force``)."""
        log = structlog.get_logger("worker").bind(version=self.version)
        golden = self.checkpoint.golden_batch()
        if golden is None:
            if force:
                raise BackendError(f"precision 'int8' needs a golden batch to calibrate on; checkpoint {self.version} "
                                   "has none (use precision 'auto' or 'fp32')")
            log.info("int8_skipped_serving_fp32", reason="no_golden_batch")
            return
        stored = self.checkpoint.stored_int8()
        try:
            graph = stored if stored is not None else self._quantize()
            session = self._session(graph)
        except BackendError as e:
            if force:
                raise BackendError(f"precision 'int8': {e}") from e
            log.warning("int8_unavailable_serving_fp32", error=str(e))
            return
        xs, names = golden
        fp32 = golden_accuracy(lambda b: self._predict(self.session, b), self.classes, xs, names)
        int8 = golden_accuracy(lambda b: self._predict(session, b), self.classes, xs, names)
        self.golden_accuracy = {"fp32": fp32, "int8": int8}
        within = int8 >= fp32 - max_drop
        if not within and not force:
            log.warning("int8_rejected_serving_fp32", fp32_accuracy=fp32, int8_accuracy=int8, max_drop=max_drop,
                        golden=len(xs))
            return
        if not within:
            log.warning("int8_forced_over_drop", fp32_accuracy=fp32, int8_accuracy=int8, max_drop=max_drop,
                        golden=len(xs))
        self.graph, self.session, self.precision = graph, session, "int8"
        log.info("int8_serving", fp32_accuracy=fp32, int8_accuracy=int8, max_drop=max_drop, golden=len(xs))

    def _quantize(self) -> bytes:
        """The int8 graph built here (a file without a stored one): the quantizer is imported only then."""
        try:
            from training.model.quantize import QuantizeError, onnx_int8_bytes
        except ImportError as e:  # onnx (the quantizer) missing
            raise BackendError(f"cannot build the int8 graph: {e}") from e
        try:
            return onnx_int8_bytes(self.checkpoint, self.graph)
        except (QuantizeError, ImportError) as e:
            raise BackendError(str(e)) from e

    def _predict(self, session: Any, xs: list[np.ndarray]) -> np.ndarray:
        t0 = xs[0].shape[0]
        if all(x.shape[0] == t0 for x in xs):
            return self._run(session, np.stack(xs))
        groups: dict[int, list[int]] = {}
        for i, x in enumerate(xs):
            groups.setdefault(x.shape[0], []).append(i)
        out = np.empty((len(xs), len(self.classes)), dtype=np.float32)
        for idx in groups.values():
            out[idx] = self._run(session, np.stack([xs[i] for i in idx]))
        return out

    def _run(self, session: Any, x: np.ndarray) -> np.ndarray:
        """Probabilities of the equal-length windows ``x`` [B, T, F], in chunks of :func:`windows_per_run`."""
        cfg = self.checkpoint.config
        step = windows_per_run(cfg.rocket, cfg.rocket_stride, x.shape[1]) or len(x)
        if len(x) <= step:
            out: np.ndarray = session.run(["probs"], {"x": x})[0]
            return out
        return np.concatenate([session.run(["probs"], {"x": x[i: i + step]})[0] for i in range(0, len(x), step)])

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [B, C] for the windows ``xs`` (one run per distinct length)."""
        return self._predict(self.session, xs)
