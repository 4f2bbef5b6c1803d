"""The lifecycle tests' and bench's task: a three-feature model, its windows, and a drift recorder on a real loop."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import redis

from producer.client import Producer
from protocol.keys import Keys
from training.model.checkpoint import load_checkpoint, save_checkpoint
from training.model.data import Dataset, stratified_split
from training.model.network import ModelConfig
from training.train import TrainConfig, fit
from worker.config import WorkerSettings
from worker.drift_report import DriftReport
from worker.loop import WorkerLoop
from worker.metrics import WorkerMetrics
from worker.predictor import TorchPredictor
from worker.types import Batch, StaticModel

#: Windows of the training distribution served before a shift (fills the default rolling sample: 512 x 8).
WARM = 4096
#: Three features with different distributions: class-dependent normal, wide normal, exponential.
N_FEATURES = 3


def windows(n: int, seed: int, length: int = 20, flip: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` windows of the three-feature task and their labels (``flip``: the class signal reversed)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = -1.0 if flip else 1.0
    xs = [np.stack([rng.normal(sign * (0.5 if c == 0 else -0.5), 1.0, length), rng.normal(2.0, 3.0, length),
                    rng.exponential(1.0, length)], axis=1).astype(np.float32) for c in y]
    return xs, y.astype(np.int64)


def train(out: Path, seed: int, n: int = 600, flip: bool = False, drift: bool = True) -> Path:
    """A tiny BiGRU on the three-feature task saved under ``out`` (``drift`` False: no drift statistics,
    as a checkpoint from before they existed)."""
    import torch

    torch.set_num_threads(1)
    xs, y = windows(n, seed, flip=flip)
    ds = Dataset(xs, y, ["a", "b"], "lifecycle-f3")
    tr, va = stratified_split(ds.y, 0.25, seed)
    res = fit(ds.subset(tr), ds.subset(va), ModelConfig(input_dim=N_FEATURES, num_classes=2, hidden=8, layers=1),
              TrainConfig(epochs=3, seed=seed, golden_size=100))
    ckpt = res.checkpoint
    if not drift:
        ckpt.drift = None
    save_checkpoint(ckpt, out)
    return out


class Recorder(WorkerMetrics):
    """Metrics plus every drift reading with the windows served when it was made."""

    def __init__(self) -> None:
        super().__init__("drift-0")
        self.readings: list[tuple[int, DriftReport]] = []
        self.served_windows = 0

    def batch(self, batch: Batch) -> None:
        super().batch(batch)
        self.served_windows += len(batch.xs)

    def drift(self, report: DriftReport) -> None:
        super().drift(report)
        self.readings.append((self.served_windows, report))


def serve(url: str, prefix: str, ckpt: Path, xs: list[np.ndarray], rec: Recorder) -> None:
    """Publish ``xs`` (16 windows an entry) under ``prefix`` and serve them with a real loop reporting to ``rec``."""
    r = redis.Redis.from_url(url)
    Producer(r, Keys(prefix, prefix)).publish_many(xs, per_entry=16)
    s = WorkerSettings(redis_url=url, prefix=prefix, group=prefix, checkpoint=str(ckpt), burst=True,
                       burst_idle_ms=200, drift_sample_every=8, drift_window=512)
    loop = WorkerLoop(r, s, "drift-0", StaticModel(TorchPredictor(load_checkpoint(ckpt))), stop=threading.Event())
    loop.observer = rec
    loop.run()
