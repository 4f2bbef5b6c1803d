"""What both serving backends get from the checkpoint they serve, written once: the accuracy on its golden
batch (what the reload gate, ``worker.gate``, and the int8 choice, ``worker.onnx_backend``, measure) and
:class:`ServesCheckpoint` (the golden windows the breaker probes with, the drift reference, the warm-up)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from training.model.checkpoint_file import CheckpointMeta
    from training.model.drift_ref import DriftReference

__all__ = ["GOLDEN_CHUNK", "ServesCheckpoint", "golden_accuracy"]

#: Windows per forward pass when a golden batch is evaluated. The runtime keeps per-thread work
#: buffers as large as the largest batch a thread ran, and a reload evaluates on the checker thread:
#: at 256 that cost a replica ~26 MiB for good after its first reload, at 64 (the default max_batch) ~8.
GOLDEN_CHUNK = 64


def golden_accuracy(predict: Callable[[list[np.ndarray]], np.ndarray], classes: Sequence[str],
                    xs: list[np.ndarray], names: list[str], batch: int = GOLDEN_CHUNK) -> float:
    """Share of windows ``xs`` whose predicted class name (``classes[argmax predict(...)]``, in passes of
    ``batch`` windows) equals the label's (``names``)."""
    hits = 0
    for i in range(0, len(xs), batch):
        labels = predict(xs[i : i + batch]).argmax(axis=1)
        hits += sum(classes[int(k)] == n for k, n in zip(labels, names[i : i + batch]))
    return hits / len(xs)


class ServesCheckpoint:
    """The members of :class:`worker.types.Predictor` that come from the checkpoint a backend serves
    (``worker.predictor.TorchPredictor``, ``worker.onnx_backend.OnnxPredictor``)."""

    checkpoint: CheckpointMeta
    n_features: int

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [len(xs), C] (each backend defines it)."""
        raise NotImplementedError

    def golden_windows(self) -> list[np.ndarray]:
        """The checkpoint's golden batch as raw windows (the breaker probes with it; empty when none)."""
        return self.checkpoint.golden_windows()

    @property
    def drift_reference(self) -> DriftReference | None:
        """The checkpoint's training statistics (drift is measured against them); None when it has none."""
        return self.checkpoint.drift

    def warmup(self) -> None:
        """One forward pass so the first real batch does not pay for lazy initialisation."""
        self.predict([np.zeros((8, self.n_features), dtype=np.float32)])
