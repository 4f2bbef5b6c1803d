"""Training loop: AdamW with a one-cycle, cosine or ReduceLROnPlateau schedule, early stopping, gradient
clipping and an optional exponential moving average of the weights (the averaged weights are kept).

Seeded and deterministic on CPU: the same data, config and seed give bit-identical weights.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training.augment import AUGMENT_MODES, SMOOTH_AUTOCORR, Augmenter, lag1_autocorrelation
from training.model.checkpoint import Checkpoint
from training.model.data import Dataset, fill_missing, fingerprint, normalization, pad
from training.model.drift_ref import build_reference
from training.model.network import ModelConfig, SequenceClassifier

SCHEDULES = ("onecycle", "cosine", "plateau")


@dataclass
class TrainConfig:
    """Optimisation settings. ``batch_size=0`` picks one from the training set size (see :func:`auto_batch`)."""

    epochs: int = 1500  # passes over the training windows, at most (the published networks' budget)
    steps: int = 0  # train for about this many optimizer steps instead of `epochs` epochs (0 = epochs)
    # Wall seconds of optimizer steps at most: the epochs are cut to what fits, measured on this machine
    # from the first steps (0 = no limit).
    time_budget: float = 45.0
    batch_size: int = 0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    warmup: float = 0.05  # fraction of the schedule spent warming up (one-cycle: rising to lr; cosine: linearly)
    # Epochs without a better validation loss before stopping; 0 = train all epochs and keep the last;
    # -1 = auto: early stopping (AUTO_PATIENCE) only with a validation set large enough to pick an epoch.
    patience: int = -1
    clip: float = 1.0
    augment: str = "auto"  # none, noise, all, or auto: gain and slicing only for smooth series (see training.augment)
    jitter: float = 0.05  # std of Gaussian noise added to normalized training inputs
    scale: float = 0.1  # std of a per-window random gain applied to normalized training inputs
    crop: float = 0.0  # window slicing: stretch a random slice of (1 - crop) of the window to its length
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights, kept at the end (0 = off)
    seed: int = 0
    device: str = "cpu"
    golden_size: int = 256

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {self.augment!r}")
        if not 0.0 <= self.crop < 1.0:
            raise ValueError(f"crop must be in [0, 1), got {self.crop}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.epochs < 1 or self.batch_size < 0 or self.lr <= 0 or self.patience < -1 or self.time_budget < 0:
            raise ValueError(f"invalid optimisation settings in {self}")


@dataclass
class TrainResult:
    """A trained checkpoint and its per-epoch history."""

    checkpoint: Checkpoint
    history: list[dict[str, float]] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    best_epoch: int = 0


#: Batch size under ``batch_size=0``: a tenth of the training windows, within these bounds.
AUTO_BATCH = (16, 64)

#: Early stopping under ``patience=-1``: this patience, with at least this many validation windows.
AUTO_PATIENCE, AUTO_PATIENCE_MIN_VAL = 10, 200


def auto_patience(patience: int, val_windows: int) -> int:
    """``patience``, or for -1 (auto) early stopping only when validation is large enough to trust."""
    if patience >= 0:
        return patience
    return AUTO_PATIENCE if val_windows >= AUTO_PATIENCE_MIN_VAL else 0


def auto_batch(n: int) -> int:
    """A tenth of ``n`` windows a step, within :data:`AUTO_BATCH` (all of them when the set is smaller).

    The published networks' ``n / 10`` (InceptionTime, ResNet), kept at 16 or more for BatchNorm's
    statistics and at 64 or less: on a CPU a step's time is mostly the recurrent layer's sequential
    steps, so larger sets get more windows a step rather than many more steps.
    """
    lo, hi = AUTO_BATCH
    return int(min(n, max(lo, min(hi, n // 10))))


def budget_epochs(tcfg: TrainConfig, n: int) -> int:
    """Epochs that spend the step budget on ``n`` training windows (at most ``tcfg.epochs``)."""
    if not tcfg.steps:
        return tcfg.epochs
    return max(1, min(tcfg.epochs, math.ceil(tcfg.steps / math.ceil(n / (tcfg.batch_size or auto_batch(n))))))


def set_determinism(seed: int) -> None:
    """Seed torch and make CPU kernels deterministic."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def to_tensors(ds: Dataset, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fill missing values (linear in time, carried at the ends), normalize and pad ``ds`` into tensors."""
    x, lengths = pad([((fill_missing(w) - mean) / std).astype(np.float32) for w in ds.X])
    return torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(np.asarray(ds.y, dtype=np.int64))


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Logits of ``model`` over a padded tensor dataset (CPU tensor [N, C])."""
    model.eval()
    first = next(model.parameters(), None)  # a dynamically quantized model has none: CPU
    dev = first.device if first is not None else torch.device("cpu")
    return torch.cat([model(x[i : i + batch].to(dev), lengths[i : i + batch]).float().cpu() for i in range(0, len(x), batch)])


def evaluate(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and predictions of ``model`` on a tensor dataset."""
    logits = predict(model, x, lengths)
    loss = float(nn.functional.cross_entropy(logits, y).item())
    p = logits.argmax(-1).numpy()
    return loss, float((p == y.numpy()).mean()), p


class _Shape:
    """The one-cycle / cosine learning-rate shape over ``total`` steps; ``total`` may shrink once the
    time budget is known (the schedule then anneals to zero by the new end)."""

    def __init__(self, tcfg: TrainConfig, total: int) -> None:
        # one-cycle: the warmup rises from lr / 25 (cosine: from 0), then both anneal to 0 along a cosine.
        self.warmup, self.start = tcfg.warmup, (1 / 25 if tcfg.schedule == "onecycle" else 0.0)
        self.total = total

    def __call__(self, step: int) -> float:
        warm = max(1, int(self.warmup * self.total))
        if step < warm:
            return self.start + (1 - self.start) * (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, self.total - warm))))


def _scheduler(opt: torch.optim.Optimizer, tcfg: TrainConfig, steps_per_epoch: int) -> Any:
    if tcfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, abs(tcfg.patience) // 4))
    return torch.optim.lr_scheduler.LambdaLR(opt, _Shape(tcfg, tcfg.epochs * steps_per_epoch))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="epoch", desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


@dataclass
class _Tensors:
    """A dataset normalized and padded into tensors (see :func:`to_tensors`)."""

    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


#: The time budget's probe: seconds per step are measured over PROBE_STEPS steps after the first PROBE_FROM.
PROBE_FROM, PROBE_STEPS = 3, 10
#: A run past this multiple of its time budget stops at the end of the epoch (the machine slowed down).
OVERRUN = 1.5


@dataclass
class _Clock:
    """Counts optimizer steps and cuts the run's epochs to the time budget once it has measured a step."""

    budget: float
    steps: int = 0
    started: float = 0.0
    probe: float = 0.0
    seconds_per_step: float | None = None

    def tick(self, run: _Run) -> None:
        """After each optimizer step: measure, then shorten ``run.epochs`` (and its schedule) to fit."""
        self.steps += 1
        if not self.budget:
            return
        now = time.perf_counter()
        if self.steps == 1:
            self.started = now
        elif self.steps == PROBE_FROM:
            self.probe = now
        elif self.steps == PROBE_FROM + PROBE_STEPS:
            self.seconds_per_step = (now - self.probe) / PROBE_STEPS
            per_epoch = math.ceil(len(run.train) / run.batch_size)
            allowed = self.steps + int((self.budget - (now - self.started)) / self.seconds_per_step)
            if allowed < run.epochs * per_epoch:
                run.epochs = max(1, allowed // per_epoch)
                shape = getattr(run.sched, "lr_lambdas", [None])[0]
                if isinstance(shape, _Shape):
                    shape.total = run.epochs * per_epoch
        elif now - self.started > OVERRUN * self.budget:
            run.epochs = 0  # the current epoch is the last


@dataclass
class _Run:
    """Everything one training run holds: data, model, optimiser, schedule and the settings in force."""

    tcfg: TrainConfig
    rng: np.random.Generator
    mean: np.ndarray
    std: np.ndarray
    train: _Tensors
    val: _Tensors
    dev: torch.device
    smoothness: float
    augment: Augmenter
    model: SequenceClassifier
    batch_size: int
    patience: int
    epochs: int
    opt: torch.optim.Optimizer
    sched: Any
    averaged: torch.optim.swa_utils.AveragedModel | None
    clock: _Clock
    rocket: dict[str, float] | None
    offset: torch.Tensor | None  # with rocket_sum: the branch's leave-one-out logits of each training window


def _setup(train: Dataset, val: Dataset, mcfg: ModelConfig, tcfg: TrainConfig, fixed_epochs: int | None) -> _Run:
    """Seed, normalize, build the model and optimiser, and settle batch size, patience and epochs.

    The order of the seeded steps is part of the determinism contract (same seed, same weights).
    """
    if not train.labeled or not val.labeled:
        raise ValueError("training needs labelled data (the dataset file has no labels)")
    set_determinism(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    mean, std = normalization(train)
    xt, xv = _Tensors(*to_tensors(train, mean, std)), _Tensors(*to_tensors(val, mean, std))
    dev = torch.device(tcfg.device)
    smoothness = lag1_autocorrelation(train)
    augment = Augmenter(tcfg.augment, tcfg.jitter, tcfg.scale, tcfg.crop, smooth=smoothness >= SMOOTH_AUTOCORR)
    model = SequenceClassifier(mcfg).to(dev)
    bs = tcfg.batch_size or auto_batch(len(xt))
    epochs = fixed_epochs or budget_epochs(tcfg, len(xt))
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = _scheduler(opt, TrainConfig(**{**asdict(tcfg), "epochs": epochs}), math.ceil(len(xt) / bs))
    averaged = None
    if tcfg.ema:
        averaged = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tcfg.ema), use_buffers=True)
    rocket, offset = fit_rocket(model, xt, tcfg.seed) if model.rocket is not None else (None, None)
    return _Run(tcfg, rng, mean, std, xt, xv, dev, smoothness, augment, model, bs,
                auto_patience(tcfg.patience, len(val)), epochs, opt, sched, averaged, _Clock(tcfg.time_budget), rocket,
                offset.to(dev) if offset is not None and mcfg.rocket_sum else None)


@torch.no_grad()
def fit_rocket(model: SequenceClassifier, data: _Tensors, seed: int, chunk: int = 64) -> tuple[dict[str, float], torch.Tensor]:
    """Fit the random-convolution branch's biases and its ridge read-out on the (unaugmented) training
    windows; returns the read-out's penalty, temperature and leave-one-out accuracy, and the training
    windows' leave-one-out logits."""
    from training.ridge import fit_ridge

    assert model.rocket is not None
    model.rocket.features.fit(data.x, data.lengths, seed)
    feats = torch.cat([model.rocket.features(data.x[i : i + chunk], data.lengths[i : i + chunk])
                       for i in range(0, len(data), chunk)]).numpy()
    r = fit_ridge(feats, data.y.numpy(), model.cfg.num_classes, seed)
    model.rocket.coef.copy_(torch.from_numpy(r.coef))
    model.rocket.intercept.copy_(torch.from_numpy(r.intercept))
    return {"alpha": r.alpha, "temperature": r.temperature, "loo_accuracy": r.loo_accuracy}, torch.from_numpy(r.loo_logits)


def _step(run: _Run, idx: torch.Tensor) -> tuple[float, int]:
    """One optimizer step on the training windows ``idx``: the batch's loss and correct predictions."""
    tcfg, data = run.tcfg, run.train
    xb, yb = data.x[idx].to(run.dev), data.y[idx].to(run.dev)
    xb = run.augment(xb, data.lengths[idx])
    members = run.model.member_logits(xb, data.lengths[idx])
    if run.offset is not None:
        members = [z + run.offset[idx] for z in members]
    loss = torch.stack([nn.functional.cross_entropy(z, yb, label_smoothing=tcfg.label_smoothing) for z in members]).mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(run.model.parameters(), tcfg.clip)
    run.opt.step()
    if tcfg.schedule != "plateau":
        run.sched.step()
    if run.averaged is not None:
        run.averaged.update_parameters(run.model)
    votes = torch.stack([torch.softmax(z.detach(), dim=-1) for z in members]).mean(dim=0)
    return loss.item(), int((votes.argmax(-1) == yb).sum())


def _epoch(run: _Run, epoch: int, validate: bool = True) -> dict[str, float]:
    """Train one epoch (shuffled batches), validate, step a plateau schedule; the history row.

    Without ``validate`` the row has no ``val_loss`` / ``val_accuracy``.
    """
    run.model.train()
    n = len(run.train)
    perm = torch.from_numpy(run.rng.permutation(n))
    total, correct = 0.0, 0
    for i in range(0, n, run.batch_size):
        idx = perm[i : i + run.batch_size]
        loss, right = _step(run, idx)
        run.clock.tick(run)
        total += loss * len(idx)
        correct += right
    row = {"epoch": epoch, "train_loss": total / n, "train_accuracy": correct / n, "lr": run.opt.param_groups[0]["lr"]}
    if not validate:
        return row
    if run.averaged is not None:
        recompute_batchnorm(run.averaged.module, run.train, run.batch_size, run.dev)
    vloss, vacc, _ = evaluate(_served(run), run.val.x, run.val.lengths, run.val.y)
    if run.tcfg.schedule == "plateau":
        run.sched.step(vloss)
    return {**row, "val_loss": vloss, "val_accuracy": vacc}


#: Validation passes of a run that keeps its last weights (for the history; early stopping scores every epoch).
VALIDATIONS = 5

#: The weights kept from a run: (validation loss, epoch, state dict on CPU).
_Kept = tuple[float, int, dict[str, torch.Tensor]]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, data: _Tensors, batch_size: int, dev: torch.device) -> None:
    """Replace ``model``'s BatchNorm statistics by their average over one pass of ``data`` (no augmentation).

    Averaged weights need this: the moving average of running statistics gathered under the raw
    weights does not describe the averaged network's activations (as in SWA's ``update_bn``).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(data), batch_size):
        model(data.x[i : i + batch_size].to(dev), data.lengths[i : i + batch_size])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def _served(run: _Run) -> nn.Module:
    """The network whose weights a checkpoint keeps: the moving average when there is one."""
    return run.model if run.averaged is None else run.averaged.module


def _epochs(run: _Run, keep_last: bool, on_epoch: Callable[[dict[str, float]], None] | None,
            bar: Any) -> tuple[list[dict[str, float]], _Kept]:
    """Train up to ``run.epochs`` epochs; the history and the weights to keep.

    Those are the best validation loss's (stopping ``run.patience`` epochs after it), or with
    ``keep_last`` the final epoch's.
    """
    best: _Kept | None = None
    history: list[dict[str, float]] = []
    epoch = 0
    while epoch < run.epochs:  # the time budget may shorten run.epochs during the first epochs
        epoch += 1
        # Keeping the last weights, the validation set only draws the history: score it VALIDATIONS times.
        every = max(1, run.epochs // VALIDATIONS) if keep_last and run.tcfg.schedule != "plateau" else 1
        row = _epoch(run, epoch, validate=epoch % every == 0 or epoch >= run.epochs)
        if bar.total != max(run.epochs, epoch):
            bar.total = max(run.epochs, epoch)
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if "val_loss" in row:
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_loss=f"{row['val_loss']:.4f}",
                            val_acc=f"{row['val_accuracy']:.4f}")
        bar.update(1)
        if keep_last:
            continue
        # Ties (common with tiny validation sets) go to the later epoch: more training, same loss.
        if best is None or row["val_loss"] <= best[0]:
            best = (row["val_loss"], epoch, _weights(_served(run)))
        elif epoch - best[1] >= run.patience:
            break
    if best is None:  # keep_last: the final weights
        if "val_loss" not in history[-1]:  # the time budget ended the run inside an epoch meant to be the last but one
            vloss, vacc, _ = evaluate(_served(run), run.val.x, run.val.lengths, run.val.y)
            history[-1].update(val_loss=vloss, val_accuracy=vacc)
        best = (history[-1]["val_loss"], len(history), _weights(_served(run)))
    return history, best


def _checkpoint(run: _Run, train: Dataset, val: Dataset, mcfg: ModelConfig, best: _Kept, epochs: int,
                seconds_per_epoch: float) -> Checkpoint:
    """The checkpoint of the kept weights (already loaded into ``run.model``), re-validated, with a
    golden batch of up to ``golden_size`` validation windows."""
    vloss, vacc, _ = evaluate(run.model, run.val.x, run.val.lengths, run.val.y)
    gidx = run.rng.permutation(len(val))[: run.tcfg.golden_size]
    gx, gl = pad([fill_missing(val.X[i]).astype(np.float32) for i in gidx])  # raw units, missing values filled
    params = sum(p.numel() for p in run.model.parameters())
    metrics: dict[str, Any] = {"val_accuracy": vacc, "val_loss": vloss, "epochs": epochs, "best_epoch": best[1],
                               "seconds_per_epoch": seconds_per_epoch, "params": params, "batch_size": run.batch_size,
                               "patience": run.patience, "smoothness": run.smoothness, "augment": run.augment.describe(),
                               "seconds_per_step": run.clock.seconds_per_step, "rocket": run.rocket}
    val_probs = torch.softmax(predict(run.model, run.val.x, run.val.lengths), dim=-1).numpy()
    return Checkpoint(config=mcfg, classes=list(train.classes), mean=run.mean, std=run.std, state_dict=best[2],
                      metrics=metrics, data_fingerprint=fingerprint(train), golden_x=gx, golden_lengths=gl,
                      golden_y=np.asarray(val.y)[gidx],
                      drift=build_reference(train.X, train.y, mcfg.num_classes, val_probs))


def fit(
    train: Dataset,
    val: Dataset,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    progress: bool = False,
    fixed_epochs: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train on ``train``, early-stopping on ``val`` loss; returns the best epoch's checkpoint.

    With ``fixed_epochs`` the run trains exactly that many epochs (schedule included) and keeps the
    last weights: that is how a final model is refit on training plus validation data once the
    validation run has chosen the epoch count.
    """
    run = _setup(train, val, mcfg, tcfg, fixed_epochs)
    t0 = time.perf_counter()
    bar = _progress(run.epochs, progress, desc)
    try:
        history, best = _epochs(run, fixed_epochs is not None or run.patience == 0, on_epoch, bar)
    finally:
        bar.close()
    spe = (time.perf_counter() - t0) / max(1, len(history))
    run.model.load_state_dict(best[2])
    ckpt = _checkpoint(run, train, val, mcfg, best, len(history), spe)
    return TrainResult(ckpt, history, spe, best[1])
