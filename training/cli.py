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
    """Trainer configuration (env prefix ``BIGRU_TRAIN_``; flags override). Defaults reach the accuracy targets."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_TRAIN_", env_file=".env", extra="ignore")

    data: str = "synthetic"
    test: str | None = None
    out: str = "checkpoints"
    n: int = 4000
    test_n: int = 0
    length: int = 20
    val_fraction: float = 0.2
    refit: bool = True
    label_column: str = "label"
    features: int = 1
    cell: str = "gru"
    bidirectional: bool = True
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    pooling: str = "last,mean"
    epochs: int = 60
    batch_size: int = 0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    patience: int = 20
    clip: float = 1.0
    jitter: float = 0.0
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
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    g.add_argument("--batch-size", type=int, help="0 = from the training set size")
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["cosine", "plateau"])
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    g.add_argument("--clip", type=float, help="gradient-norm clipping")
    g.add_argument("--jitter", type=float, help="training-input noise std (normalized units)")
    g.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="retrain on train+validation for the chosen epoch count (default on)")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="cpu, cuda or auto")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``train`` subcommand."""
    p = argparse.ArgumentParser(prog="bigru-train", description="Train a sequence classifier and write a versioned checkpoint.",
                                epilog=f"subcommands: {', '.join(COMMANDS)} (bigru-train SUBCOMMAND --help)")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="'synthetic' or a .ts/.npz/.csv file (the training split)")
    g.add_argument("--test", help="the file's own test split (e.g. X_TEST.ts)")
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


def configs(s: TrainSettings) -> tuple[dict[str, object], object]:
    """The model overrides and the TrainConfig described by ``s``."""
    from training.train import TrainConfig

    model = {"cell": s.cell, "bidirectional": s.bidirectional, "hidden": s.hidden, "layers": s.layers,
             "dropout": s.dropout, "pooling": tuple(p.strip() for p in s.pooling.split(",") if p.strip())}
    tcfg = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, schedule=s.schedule,
                       patience=s.patience, clip=s.clip, jitter=s.jitter, seed=s.seed, device=resolve_device(s.device))
    return model, tcfg


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def train_main(argv: list[str]) -> int:
    """The ``train`` subcommand."""
    args = build_parser().parse_args(argv)
    try:
        s = settings_from_args(args)
        model, tcfg = configs(s)
    except (ValidationError, ValueError) as e:
        print(f"bigru-train: invalid configuration: {e}", file=sys.stderr)
        return 2
    from training.data import DataError
    from training.run import RunOptions, run

    opts = RunOptions(data=s.data, test=s.test, out=s.out, n=s.n, test_n=s.test_n, length=s.length,
                      val_fraction=s.val_fraction, refit=s.refit, label_column=s.label_column, features=s.features,
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
        print(f"wrote {summary['checkpoint']} (val_accuracy={summary['val_accuracy']:.4f}{test})")
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
