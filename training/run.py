"""One training run: load data, split, fit, refit, evaluate, write checkpoint + metrics.json + plots."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from training.metrics import report
from training.model.checkpoint import Checkpoint, save_checkpoint, set_latest_version
from training.model.data import Dataset, align_classes, stratified_split, synthetic
from training.model.formats import load_dataset
from training.model.network import ModelConfig
from training.model.recording import load_recording
from training.recordings import Cut, block_split, cut_windows
from training.ridge import MAX_WINDOWS
from training.train import TrainConfig, TrainResult, budget_epochs, fit, predict, to_tensors

log = structlog.get_logger("training")

SYNTHETIC_TEST_SEED = 1_000_003  # offset so a synthetic test set never overlaps the training draw


@dataclass
class RunOptions:
    """What to train on and where to write it (model and optimiser settings live in their configs)."""

    data: str = "synthetic"
    test: str | None = None
    out: str = "checkpoints"
    n: int = 4000  # synthetic: windows for training + validation
    test_n: int = 0  # synthetic: held-out test windows (0 = no test set)
    length: int = 20  # synthetic: timesteps per window
    val_fraction: float = 0.2
    refit: bool = True  # the served model trains on training + validation data
    # With refit, first train on the training split alone to measure validation accuracy (doubles the time).
    validation: bool = False
    label_column: str = "label"
    features: int = 1
    # A long recording (training.recordings): cut windows of `window` samples every `hop` (0: the file holds windows).
    window: int = 0
    hop: int = 0  # 0: window // 4
    split: Literal["time", "device"] = "time"
    test_fraction: float = 0.2  # with --window and no --test: the held-out block (or devices)
    rate_hz: float = 0.0  # a recording without a time column: its sampling rate
    plots: bool = True
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields other than input_dim/num_classes


@dataclass
class RunData:
    """The datasets of a run."""

    train: Dataset
    val: Dataset
    test: Dataset | None


def load_run_data(opts: RunOptions, seed: int) -> RunData:
    """Load (or generate) the data and split off a stratified, seeded validation set (a recording,
    ``window`` > 0: split by time blocks or devices, :func:`recording_data`)."""
    if opts.window:
        return recording_data(opts, seed)
    if opts.data == "synthetic":
        full = synthetic(opts.n, opts.length, seed)
        test = synthetic(opts.test_n, opts.length, SYNTHETIC_TEST_SEED + seed) if opts.test_n else None
    else:
        full = load_dataset(opts.data, opts.label_column, opts.features)
        test = None
        if opts.test:
            test = align_classes(load_dataset(opts.test, opts.label_column, opts.features), full.classes)
            if test.n_features != full.n_features:
                raise ValueError(f"{opts.test} has {test.n_features} features, {opts.data} has {full.n_features}")
    if not full.labeled:
        raise ValueError(f"{opts.data} has no labels; training needs a 'y' array or label column")
    tr, va = stratified_split(full.y, opts.val_fraction, seed)
    return RunData(full.subset(tr), full.subset(va), test)


def recording_data(opts: RunOptions, seed: int) -> RunData:
    """Windows cut from the long recording ``opts.data`` (:mod:`training.recordings`): training,
    validation and test by contiguous time blocks (or devices) with a one-window gap; with
    ``opts.test``, that whole recording is the test set instead of a held-out block."""
    cut = Cut(opts.window, opts.hop or max(1, opts.window // 4))
    rec = load_recording(opts.data, opts.rate_hz or None, opts.label_column)
    test_fraction = 0.0 if opts.test else opts.test_fraction
    train, val, test = block_split(rec, cut, opts.val_fraction, test_fraction, opts.split, seed)
    if opts.test:
        test = align_classes(cut_windows(load_recording(opts.test, opts.rate_hz or None, opts.label_column), cut),
                             train.classes)
    log.info("recording_split", data=opts.data, split=opts.split, window=cut.window, hop=cut.hop,
             train=len(train), val=len(val), test=len(test))
    return RunData(train, val, test if len(test) else None)


def train_model(data: RunData, mcfg: ModelConfig, tcfg: TrainConfig, refit: bool, progress: bool = False,
                log_epochs: bool = False, validate: bool = True) -> tuple[TrainResult, Checkpoint]:
    """Fit on the training split, scored on validation; with ``refit``, retrain on train + validation.

    The refit trains for the epoch count early stopping chose, or for the same step budget when the
    budget ended the first run. With ``refit`` and not ``validate`` there is no first run: one run
    on train + validation for the step budget (its "validation" windows are training windows).
    Returns the validation run (its history and validation accuracy are the honest estimates) and
    the checkpoint to serve. ``progress`` draws a bar; ``log_epochs`` logs one ``epoch`` event each.
    """
    def on_epoch(phase: str) -> Callable[[dict[str, float]], None] | None:
        if not log_epochs:
            return None
        return lambda row: log.info("epoch", phase=phase, **{k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})

    both = data.train.concat(data.val)
    if refit and not validate:
        # The "validation" windows only draw the history and the golden batch here; a split with one
        # window per class leaves none, and then the training windows serve.
        only = fit(both, data.val if len(data.val) else both, mcfg, tcfg, progress=progress, fixed_epochs=budget_epochs(tcfg, len(both)),
                   on_epoch=on_epoch("fit"), desc="fit")
        return only, only.checkpoint
    if not len(data.val):
        raise ValueError(f"the validation split of {data.train.name or 'the data'} is empty (no class has two windows); "
                         "train without a validation run (--refit --no-validation)")
    res = fit(data.train, data.val, mcfg, tcfg, progress=progress, on_epoch=on_epoch("fit"), desc="fit")
    if not refit:
        return res, res.checkpoint
    epochs = max(1, res.best_epoch)
    if not res.checkpoint.metrics.get("patience") and tcfg.steps:  # the step budget ended the run: same budget again
        epochs = budget_epochs(tcfg, len(both))
    final = fit(both, data.val, mcfg, tcfg, progress=progress, fixed_epochs=epochs, on_epoch=on_epoch("refit"), desc="refit")
    ckpt = final.checkpoint
    ckpt.golden_x, ckpt.golden_lengths, ckpt.golden_y = (res.checkpoint.golden_x, res.checkpoint.golden_lengths, res.checkpoint.golden_y)
    return res, ckpt


def evaluate_checkpoint(ckpt: Checkpoint, ds: Dataset, device: str = "cpu") -> dict[str, Any]:
    """Accuracy, per-class metrics and confusion matrix of ``ckpt`` on ``ds``."""
    model = ckpt.build_model(device)
    x, lengths, y = to_tensors(ds, ckpt.mean, ckpt.std)
    pred = predict(model, x, lengths).argmax(-1).numpy()
    return report(y.numpy(), pred, list(ckpt.classes))


def part_accuracies(ckpt: Checkpoint, ds: Dataset, device: str = "cpu") -> dict[str, float] | None:
    """Accuracy of each half of a model with the random-convolution branch on ``ds``: the network alone
    (its members' mean probabilities) and the branch alone; None without the branch."""
    import torch

    model = ckpt.build_model(device)
    if model.rocket is None:
        return None
    x, lengths, y = to_tensors(ds, ckpt.mean, ckpt.std)
    net, branch = [], []
    with torch.inference_mode():
        for i in range(0, len(x), 256):
            xb, lb = x[i : i + 256].to(device), lengths[i : i + 256]
            net.append(torch.stack([torch.softmax(z, -1) for z in model.member_logits(xb, lb)]).mean(0).argmax(-1).cpu())
            branch.append(model.rocket(xb, lb).argmax(-1).cpu())
    return {"network": float((torch.cat(net) == y).float().mean()), "rocket": float((torch.cat(branch) == y).float().mean())}


#: Features of the random-convolution branch (MiniRocket's default; 0 = no branch). Its dilations
#: span the longest training window.
ROCKET_FEATURES = 10_000
#: The branch averages long windows down to at most this many steps (its cost grows with the length).
ROCKET_STEPS = 512
#: The branch's share of the class probabilities, for sets whose windows its read-out is fitted on whole
#: (at most :data:`training.ridge.MAX_WINDOWS`); beyond that the share falls in proportion, since the
#: network has learnt from every window and the read-out from a sample of them.
ROCKET_WEIGHT = 0.7

#: The stem shortens the longest training window to at most this many steps for the recurrent layer.
RNN_STEPS = 64


def auto_downsample(max_length: int, rnn_steps: int = RNN_STEPS) -> int:
    """The smallest power-of-two stride that leaves at most ``rnn_steps`` steps of ``max_length``."""
    return 1 << max(0, math.ceil(math.log2(max(1.0, max_length / rnn_steps))))


def default_model_config(input_dim: int, num_classes: int, max_length: int, overrides: dict[str, Any] | None = None,
                         windows: int = 0) -> ModelConfig:
    """The default architecture for ``windows`` training windows of ``input_dim`` features and up to ``max_length`` steps.

    Only the stem's stride and the branch's dilations, stride and share depend on the data (its longest
    training window, its number of windows); ``overrides`` win, and ``channels=0`` gives the plain
    recurrent model without convolutions.
    """
    o = dict(overrides or {})
    rnn_steps = int(o.pop("rnn_steps", RNN_STEPS))
    if "downsample" not in o:
        o["downsample"] = 0 if o.get("channels") == 0 else auto_downsample(max_length, rnn_steps)
    if o.get("channels") == 0:
        o.setdefault("conv_blocks", 0)
    o.setdefault("rocket", ROCKET_FEATURES)
    if o["rocket"]:
        o.setdefault("rocket_length", max_length)
        o.setdefault("rocket_stride", max(1, math.ceil(max_length / ROCKET_STEPS)))
        o.setdefault("rocket_weight", round(ROCKET_WEIGHT * min(1.0, MAX_WINDOWS / windows) if windows else ROCKET_WEIGHT, 4))
    return ModelConfig(input_dim=input_dim, num_classes=num_classes, **o)


def model_config(ds: Dataset, overrides: dict[str, Any]) -> ModelConfig:
    """The default architecture sized for ``ds`` (its training windows only), with ``overrides`` applied."""
    return default_model_config(ds.n_features, len(ds.classes), int(ds.lengths.max()), overrides, len(ds))


def run(opts: RunOptions, tcfg: TrainConfig, progress: bool = False) -> dict[str, Any]:
    """Train, evaluate and write one run; returns the JSON summary (also stored in ``metrics.json``)."""
    t0 = time.perf_counter()
    data = load_run_data(opts, tcfg.seed)
    mcfg = model_config(data.train, opts.model)
    log.info("train_start", data=opts.data, train=len(data.train), val=len(data.val),
             test=len(data.test) if data.test is not None else 0, config=mcfg.to_dict())
    validated = opts.validation or not opts.refit
    res, ckpt = train_model(data, mcfg, tcfg, opts.refit, progress, log_epochs=not progress, validate=validated)
    val = evaluate_checkpoint(res.checkpoint, data.val, tcfg.device) if validated else None
    test = evaluate_checkpoint(ckpt, data.test, tcfg.device) if data.test is not None else None
    metrics: dict[str, Any] = {
        "val_accuracy": val["accuracy"] if val else None,
        "test_accuracy": test["accuracy"] if test else None,
        "epochs": len(res.history),
        "best_epoch": res.best_epoch,
        "refit": opts.refit,
        "validated": validated,
        "seconds_per_epoch": res.seconds_per_epoch,
        "params": int(res.checkpoint.metrics["params"]),
        "batch_size": int(res.checkpoint.metrics["batch_size"]),
        "train_seconds": time.perf_counter() - t0,
        "validation": val,
        "test": test,
        "data": {"train": data.train.summary(), "val": data.val.summary() if len(data.val) else None, "test": data.test.summary() if data.test else None},
        "train_config": asdict(tcfg),
    }
    ckpt.metrics = {k: metrics[k] for k in ("val_accuracy", "test_accuracy", "epochs", "best_epoch", "seconds_per_epoch", "params")}
    path = save_checkpoint(ckpt, opts.out, set_latest=False)
    run_dir = path.parent
    summary = {
        "checkpoint": str(path),
        "version": ckpt.version,
        "val_accuracy": metrics["val_accuracy"],
        "params": metrics["params"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "epochs": metrics["epochs"],
    }
    if test is not None:
        summary["test_accuracy"] = test["accuracy"]
    metrics["history"] = res.history
    metrics["summary"] = summary
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    if opts.plots:
        from training.experiments.plots import plot_confusion, plot_history

        plot_history(res.history, run_dir)
        which = "test" if test is not None else "validation"
        scored = test or val
        if scored is not None:
            plot_confusion(scored["confusion"], list(ckpt.classes), run_dir / "confusion.png", f"Confusion matrix ({which})")
    set_latest_version(opts.out, ckpt.version)  # only now: a reader of 'latest' sees the whole run directory
    log.info("train_done", **summary)
    return summary


def _json_default(o: object) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o)}")
