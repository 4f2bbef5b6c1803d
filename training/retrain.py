"""One retrain of the loop: the original training data plus the labelled live windows, published as a candidate.

Mixing: the newest ``watch_max_live`` labelled live windows (:func:`training.live.load_live`) are
repeated (whole copies, then a seeded sample of the rest) until they are ``watch_live_weight`` of the
training windows; the original data (the trainer's ``BIGRU_TRAIN_DATA``, synthetic by default) fill the
rest at their own size. A retrain that drift called uses ``watch_drift_live_weight`` instead (default 1:
live windows only, since drift says the original data no longer describe the inputs). When the live windows already make up more than their share, each is used once. Validation and the golden batch come from the live windows only, so the
candidate is scored on today's distribution. The trainer's defaults and time budget apply
(:class:`training.settings.TrainSettings`, ``BIGRU_TRAIN_*``); the checkpoint is published with
``set_latest=False``: a candidate, never latest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import structlog

from protocol.keys import Keys
from training.live import load_live
from training.loop_settings import LoopSettings
from training.model.checkpoint import save_checkpoint
from training.model.data import Dataset, align_classes, stratified_split
from training.publish import publish_checkpoint
from training.run import RunData, RunOptions, load_run_data, model_config, train_model
from training.train import TrainConfig

log = structlog.get_logger("loop")


class RetrainError(RuntimeError):
    """A retrain cannot run (no labelled live windows, classes that do not match)."""


@dataclass(frozen=True)
class Mixed:
    """The retrain's data and how it was mixed."""

    data: RunData
    live: int
    live_copies: float
    original: int


def mix(original: Dataset, live: Dataset, weight: float, seed: int) -> Dataset:
    """``original`` plus ``live`` repeated until live windows are ``weight`` of the result (see the module doc)."""
    if weight <= 0:
        return original.concat(live)
    rng = np.random.default_rng(seed)
    if weight >= 1:
        return live
    want_live = int(round(weight / (1 - weight) * len(original)))
    if want_live <= len(live):  # live windows are already at least their share: each once
        return original.concat(live)
    idx = np.concatenate([np.tile(np.arange(len(live)), want_live // len(live)),
                          rng.choice(len(live), want_live % len(live), replace=False)])
    return original.concat(live.subset(idx))


def mixed_data(s: LoopSettings, opts: RunOptions, seed: int, classes: list[str], weight: float) -> Mixed:
    """The original data and the live windows mixed at ``weight`` (the live windows' share)."""
    live = load_live(s.live_dir, classes, s.watch_max_live)
    if live is None or len(live) < 4:
        raise RetrainError(f"fewer than 4 labelled live windows under {s.live_dir}")
    base = load_run_data(opts, seed)
    original = align_classes(base.train.concat(base.val), classes)
    tr, va = stratified_split(live.y, opts.val_fraction, seed)
    live_train = live.subset(tr) if len(va) else live
    live_val = live.subset(va) if len(va) else live
    train = mix(original, live_train, weight, seed)
    train.name = "original+live"
    copies = (len(train) - len(original)) / max(1, len(live_train)) if weight < 1 else 1.0
    return Mixed(RunData(train, live_val, None), len(live), round(copies, 3), len(original) if weight < 1 else 0)


def retrain(r: redis.Redis, keys: Keys, s: LoopSettings, opts: RunOptions, tcfg: TrainConfig,
            classes: list[str], drift: bool = False) -> dict[str, Any]:
    """Train on the mixed data (``watch_drift_live_weight`` when ``drift`` called it, else ``watch_live_weight``),
    save under ``watch_out`` and publish as a candidate; returns a summary."""
    t0 = time.monotonic()
    weight = s.watch_drift_live_weight if drift else s.watch_live_weight
    mixed = mixed_data(s, opts, tcfg.seed, classes, weight)
    mcfg = model_config(mixed.data.train, opts.model)
    log.info("retrain_start", train=len(mixed.data.train), live=mixed.live, live_copies=mixed.live_copies,
             original=mixed.original, time_budget=tcfg.time_budget)
    _, ckpt = train_model(mixed.data, mcfg, tcfg, refit=True, validate=False)
    from training.run import evaluate_checkpoint

    val = evaluate_checkpoint(ckpt, mixed.data.val, tcfg.device)["accuracy"]
    ckpt.metrics = {"live_val_accuracy": val, "live_windows": mixed.live, "live_copies": mixed.live_copies,
                    "original_windows": mixed.original}
    path = save_checkpoint(ckpt, s.watch_out, set_latest=False)
    entry, _ = publish_checkpoint(r, keys, path.read_bytes(), source="bigru-train watch", set_latest=False)
    summary = {"version": entry.version, "live_weight": weight, "checkpoint": str(path), "train_windows": len(mixed.data.train),
               "live_windows": mixed.live, "live_copies": mixed.live_copies, "original_windows": mixed.original,
               "live_val_accuracy": round(float(val), 4), "seconds": round(time.monotonic() - t0, 1)}
    log.info("retrain_done", **summary)
    return summary
