"""A model's accuracy on a checkpoint's golden batch: what the reload gate (``worker.gate``) and the int8
choice (``worker.onnx_backend``) both measure, written once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["GOLDEN_CHUNK", "golden_accuracy"]

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
