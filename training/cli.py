"""``bigru-train``: train a classifier and write a versioned checkpoint; experiments as subcommands.

``bigru-train [train] --data ...`` trains (the default subcommand). Other subcommands are listed in
:data:`COMMANDS` as ``"module:function"`` entry points taking ``argv`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# Subcommand -> "module:function(argv) -> int". Imported lazily so `--help` stays fast.
COMMANDS: dict[str, str] = {
    "train": "training.cli:train_main",
    "compare": "training.compare:main",
    "export": "training.export:main",
    "accuracy": "training.accuracy:main",
}
#: Registry subcommands (``publish``, ``promote``, ``models``), handled by ``training.registry_cli``.
REGISTRY_COMMANDS = ("publish", "promote", "models")


class TrainSettings(BaseSettings):
    """Trainer configuration (env prefix ``BIGRU_TRAIN_``; flags override; unset model/optimiser fields keep their defaults)."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_TRAIN_", env_file=".env", extra="ignore")

    data: str = "synthetic"
    test: str | None = None
    out: str = "checkpoints"
    n: int = 4000
    test_n: int = 0
    length: int = 20
    val_fraction: float = 0.2
    refit: bool = True
    validation: bool = False
    label_column: str = "label"
    features: int = 1
    # Model and optimiser settings: None means the default in training.model.network.ModelConfig /
    # training.train.TrainConfig (one source for each default; see `configs`).
    cell: str | None = None
    bidirectional: bool | None = None
    hidden: int | None = None
    layers: int | None = None
    dropout: float | None = None
    pooling: str | None = None
    window_norm: bool | None = None
    downsample: int | None = None  # None = chosen from the training windows' length
    channels: int | None = None
    conv_blocks: int | None = None
    kernel: int | None = None
    dilate: bool | None = None
    members: int | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    patience: int | None = None
    clip: float | None = None
    augment: str | None = None
    jitter: float | None = None
    scale: float | None = None
    crop: float | None = None
    label_smoothing: float | None = None
    ema: float | None = None
    seed: int = 0
    device: str = "cpu"
    plots: bool = True


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train``, ``compare`` and ``accuracy`` (default None: unset flags fall back to settings)."""
    g = p.add_argument_group("model")
    g.add_argument("--cell", choices=["gru", "lstm"])
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--hidden", type=int)
    g.add_argument("--layers", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--pooling", help="comma-separated subset of last,mean,max")
    g.add_argument("--window-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="add each window's own z-normalised values as extra input channels")
    g.add_argument("--downsample", type=int, help="time stride of the convolutional stem (power of 2; default: from the length)")
    g.add_argument("--channels", type=int, help="convolution channels (0 = a plain recurrent model, no convolutions)")
    g.add_argument("--conv-blocks", type=int, help="stride-1 convolution blocks after the stem")
    g.add_argument("--kernel", type=int, help="convolution kernel size (odd)")
    g.add_argument("--dilate", action=argparse.BooleanOptionalAction, default=None,
                   help="dilations 2, 4, 8, ... in the convolution blocks after the stem")
    g.add_argument("--members", type=int, help="networks in the ensemble (their probabilities are averaged; one graph)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    g.add_argument("--steps", type=int, help="optimizer steps to train for (0 = use --epochs)")
    g.add_argument("--batch-size", type=int, help="0 = from the training set size")
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["onecycle", "cosine", "plateau"])
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = none: keep the last weights)")
    g.add_argument("--clip", type=float, help="gradient-norm clipping")
    g.add_argument("--jitter", type=float, help="training-input noise std (normalized units)")
    g.add_argument("--augment", choices=["auto", "all", "noise", "none"],
                   help="auto: gain and slicing only for smooth series (lag-1 autocorrelation >= 0.5)")
    g.add_argument("--scale", type=float, help="std of a random per-window gain on training inputs")
    g.add_argument("--crop", type=float, help="window slicing: fraction of a window cut before stretching it back")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--ema", type=float, help="decay of the moving average of the weights that is kept (0 = off)")
    g.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="the served model trains on train+validation (default on)")
    g.add_argument("--validation", action=argparse.BooleanOptionalAction, default=None,
                   help="with --refit, first train on the training split alone to report validation accuracy "
                        "(doubles the training time; default off)")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="cpu, cuda or auto")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``train`` subcommand."""
    p = argparse.ArgumentParser(prog="bigru-train", description="Train a sequence classifier and write a versioned checkpoint.",
                                epilog=f"subcommands: {', '.join(COMMANDS)} (bigru-train SUBCOMMAND --help)")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="'synthetic' or a .ts/.tsv/.npz/.csv file (the training split)")
    g.add_argument("--test", help="the file's own test split (e.g. X_TEST.ts or X_TEST.tsv)")
    g.add_argument("--n", type=int, help="synthetic: windows for training + validation")
    g.add_argument("--test-n", type=int, help="synthetic: held-out test windows")
    g.add_argument("--length", type=int, help="synthetic: timesteps per window")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--label-column", help="csv: name of the label column")
    g.add_argument("--features", type=int, help="csv: features per timestep (values are row-major [T, F])")
    add_train_flags(p)
    p.add_argument("--out", help="checkpoint root directory")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON summary line (and no progress bar)")
    from training import registry_cli

    registry_cli.add_publish_flags(p)
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """Settings from the environment with the flags that were given on top."""
    flags = {k: v for k, v in vars(args).items() if v is not None and k in TrainSettings.model_fields}
    return TrainSettings(**flags)


MODEL_FIELDS = ("cell", "bidirectional", "hidden", "layers", "dropout", "pooling", "window_norm", "downsample",
                "channels", "conv_blocks", "kernel", "dilate", "members")
TRAIN_FIELDS = ("epochs", "steps", "batch_size", "lr", "weight_decay", "schedule", "patience", "clip", "augment", "jitter", "scale",
                "crop", "label_smoothing", "ema")


def configs(s: TrainSettings) -> tuple[dict[str, object], object]:
    """The model overrides and the TrainConfig described by ``s`` (unset fields keep the dataclass defaults)."""
    from training.model.device import resolve_device  # DeviceError is a ValueError
    from training.train import TrainConfig

    model: dict[str, object] = {k: getattr(s, k) for k in MODEL_FIELDS if getattr(s, k) is not None}
    if isinstance(model.get("pooling"), str):
        model["pooling"] = tuple(p.strip() for p in str(model["pooling"]).split(",") if p.strip())
    train = {k: getattr(s, k) for k in TRAIN_FIELDS if getattr(s, k) is not None}
    tcfg = TrainConfig(**train, seed=s.seed, device=resolve_device(s.device))
    return model, tcfg


def train_main(argv: list[str]) -> int:
    """The ``train`` subcommand."""
    args = build_parser().parse_args(argv)
    from protocol.logs import configure

    configure()  # events on stderr (JSON when it is not a terminal), so stdout keeps only the summary
    try:
        s = settings_from_args(args)
        model, tcfg = configs(s)
    except (ValidationError, ValueError) as e:
        print(f"bigru-train: invalid configuration: {e}", file=sys.stderr)
        return 2
    from training.model.data import DataError
    from training.run import RunOptions, run

    opts = RunOptions(data=s.data, test=s.test, out=s.out, n=s.n, test_n=s.test_n, length=s.length,
                      val_fraction=s.val_fraction, refit=s.refit, validation=s.validation, label_column=s.label_column, features=s.features,
                      plots=s.plots, model=model)
    try:
        summary = run(opts, tcfg, progress=not args.json and sys.stderr.isatty())  # type: ignore[arg-type]
    except (DataError, ValueError) as e:
        print(f"bigru-train: {e}", file=sys.stderr)
        return 2
    if args.publish:  # the checkpoint file stays written even when publishing fails
        from training import registry_cli

        summary["published"] = registry_cli.publish_trained(args, summary["checkpoint"])
    if args.json:
        print(json.dumps(summary))
    else:
        test = f", test_accuracy={summary['test_accuracy']:.4f}" if "test_accuracy" in summary else ""
        va = summary["val_accuracy"]
        val = f"val_accuracy={va:.4f}" if va is not None else "no validation run: --validation"
        print(f"wrote {summary['checkpoint']} ({val}{test})")
    return 1 if args.publish and not summary["published"] else 0


def command(name: str) -> Callable[[list[str]], int]:
    """The entry point of subcommand ``name``."""
    module, func = COMMANDS[name].split(":")
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
    return fn


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; without one, train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in REGISTRY_COMMANDS:
        from training import registry_cli

        return registry_cli.main(argv)
    if argv and argv[0] in COMMANDS:
        return command(argv[0])(argv[1:])
    return command("train")(argv)


if __name__ == "__main__":
    sys.exit(main())
