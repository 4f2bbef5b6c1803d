"""The trainer's settings, declared once: each field is a ``BIGRU_TRAIN_*`` variable and a ``bigru-train`` flag.

Every field defaults to ``None``, meaning "the default of the dataclass it configures": the group
named in the field's ``json_schema_extra`` says which (``data``/``output``:
:class:`training.run.RunOptions`, ``model``: :class:`training.model.config.ModelConfig`,
``train``: :class:`training.train.TrainConfig`), so each default lives in exactly one place.
:func:`add_flags` generates the flags from the fields (as the worker's CLI does from its settings).
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GROUPS = ("data", "model", "train", "output")


def _f(group: str, help: str, **extra: Any) -> Any:
    return Field(None, description=help, json_schema_extra={"group": group, **extra})


class TrainSettings(BaseSettings):
    """Trainer configuration (env prefix ``BIGRU_TRAIN_``; flags override; unset fields keep their dataclass defaults)."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_TRAIN_", env_file=".env", extra="ignore")

    data: str | None = _f("data", "'synthetic' or a .ts/.tsv/.npz/.csv file (the training split)")
    test: str | None = _f("data", "the file's own test split (e.g. X_TEST.ts or X_TEST.tsv)")
    n: int | None = _f("data", "synthetic: windows for training + validation")
    test_n: int | None = _f("data", "synthetic: held-out test windows")
    length: int | None = _f("data", "synthetic: timesteps per window")
    val_fraction: float | None = _f("data", "share of the training split held out for validation (with --validation)")
    label_column: str | None = _f("data", "csv: name of the label column")
    features: int | None = _f("data", "csv: features per timestep (values are row-major [T, F])")
    window: int | None = _f("data", "--data is a long recording (one sample a row, a per-sample label column; "
                            "docs/streams.md): cut windows of this many samples (0: the file holds windows)")
    hop: int | None = _f("data", "with --window: samples between window starts (0: window // 4)")
    split: Literal["time", "device"] | None = _f("data", "with --window: hold out contiguous time blocks of every "
                                                "device, or whole devices (never random windows)")
    test_fraction: float | None = _f("data", "with --window and no --test: share of the samples (or devices) held "
                                     "out for the test accuracy")
    rate_hz: float | None = _f("data", "with --window: sampling rate of a recording without a time column")
    cell: Literal["gru", "lstm", "none"] | None = _f("model", "recurrent cell (none: pooling of the convolutional trunk, an ablation)")
    bidirectional: bool | None = _f("model", "run the recurrent core in both directions")
    hidden: int | None = _f("model", "hidden units per direction")
    layers: int | None = _f("model", "recurrent layers")
    dropout: float | None = _f("model", "dropout before the classifier")
    pooling: str | None = _f("model", "comma-separated subset of last,mean,max")
    window_norm: bool | None = _f("model", "add each window's own z-normalised values as extra input channels")
    downsample: int | None = _f("model", "time stride of the convolutional stem (power of 2; default: from the length)")
    channels: int | None = _f("model", "convolution channels (0 = a plain recurrent model, no convolutions)")
    conv_blocks: int | None = _f("model", "stride-1 convolution blocks after the stem")
    kernel: int | None = _f("model", "convolution kernel size (odd)")
    dilate: bool | None = _f("model", "dilations 2, 4, 8, ... in the convolution blocks after the stem")
    members: int | None = _f("model", "networks in the ensemble (their probabilities are averaged; one graph)")
    rocket: int | None = _f("model", "features of the fixed random-convolution branch (0 = none; default 10 000)")
    rocket_sum: bool | None = _f("model", "add the network's logits to the branch's, the network trained to correct the "
                                 "branch's leave-one-out logits (default: mix probabilities, --rocket-weight)")
    rocket_weight: float | None = _f("model", "the branch's share of the class probabilities (default: 0.7, less above "
                                     "1 500 training windows)")
    stats: bool | None = _f("model", "pass each window's level and scale (mean, log std per feature) to the head")
    epochs: int | None = _f("train", "maximum epochs (early stopping may end sooner)")
    steps: int | None = _f("train", "optimizer steps to train for (0 = use --epochs)")
    time_budget: float | None = _f("train", "seconds of optimizer steps at most, measured on this machine (0 = no limit)")
    batch_size: int | None = _f("train", "0 = from the training set size")
    lr: float | None = _f("train", "peak learning rate")
    weight_decay: float | None = _f("train", "AdamW weight decay")
    schedule: Literal["onecycle", "cosine", "plateau"] | None = _f("train", "learning-rate schedule")
    patience: int | None = _f("train", "early-stopping patience in epochs (0 = none: keep the last weights; -1 = auto)")
    clip: float | None = _f("train", "gradient-norm clipping")
    augment: Literal["auto", "all", "noise", "none"] | None = _f(
        "train", "auto: gain and slicing only for smooth series (lag-1 autocorrelation >= 0.5)")
    jitter: float | None = _f("train", "training-input noise std (normalized units)")
    scale: float | None = _f("train", "std of a random per-window gain on training inputs")
    crop: float | None = _f("train", "window slicing: fraction of a window cut before stretching it back")
    label_smoothing: float | None = _f("train", "label smoothing of the cross-entropy loss")
    ema: float | None = _f("train", "decay of the moving average of the weights that is kept (0 = off)")
    seed: int | None = _f("train", "seed of the initialization, the batch order and the synthetic draw")
    device: str | None = _f("train", "cpu, cuda or auto")
    refit: bool | None = _f("data", "the served model trains on train+validation")
    validation: bool | None = _f("data", "first train on the training split alone to report validation accuracy "
                                 "(with --refit this doubles the training time)")
    out: str | None = _f("output", "checkpoint root directory")
    plots: bool | None = _f("output", "write training plots beside the checkpoint")

    def group(self, name: str) -> dict[str, Any]:
        """The fields of group ``name`` that are set (not None)."""
        return {k: v for k in fields_of(name) if (v := getattr(self, k)) is not None}


def fields_of(group: str) -> list[str]:
    """The settings fields of ``group``, in declaration order."""
    return [k for k, f in TrainSettings.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("group") == group]


def _value_type(annotation: Any) -> Any:
    """``int`` of ``int | None``, the Literal of ``Literal[...] | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def add_flags(p: argparse.ArgumentParser, groups: tuple[str, ...] = GROUPS) -> None:
    """``--name`` for every field of ``groups`` (help: the field's description; default None, so unset flags fall
    back to the environment and then to the dataclass defaults)."""
    for group in groups:
        g = p.add_argument_group(group)
        for name in fields_of(group):
            field = TrainSettings.model_fields[name]
            kind = _value_type(field.annotation)
            kw: dict[str, Any] = {"dest": name, "default": None, "help": (field.description or "").replace("%", "%%")}
            if kind is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(kind) is Literal:
                kw["choices"] = list(typing.get_args(kind))
            else:
                kw["type"] = kind
            g.add_argument("--" + name.replace("_", "-"), **kw)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """Settings from the environment with the flags that were given on top."""
    flags = {k: v for k, v in vars(args).items() if v is not None and k in TrainSettings.model_fields}
    return TrainSettings(**flags)


def configs(s: TrainSettings) -> tuple[dict[str, object], object]:
    """The model overrides and the TrainConfig described by ``s`` (unset fields keep the dataclass defaults)."""
    from training.model.device import resolve_device  # DeviceError is a ValueError
    from training.train import TrainConfig

    model = s.group("model")
    if isinstance(model.get("pooling"), str):
        model["pooling"] = tuple(p.strip() for p in str(model["pooling"]).split(",") if p.strip())
    train = s.group("train")
    if "device" in train:
        train["device"] = resolve_device(train["device"])
    return model, TrainConfig(**train)
