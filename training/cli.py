"""``bigru-train``: train a classifier and write a versioned checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from training import registry_cli
from training.checkpoint import save_checkpoint
from training.data import stratified_split, synthetic
from training.model import ModelConfig
from training.train import TrainConfig, fit


class TrainSettings(BaseSettings):
    """Trainer configuration (env prefix ``BIGRU_``; flags override)."""

    model_config = SettingsConfigDict(env_prefix="BIGRU_", env_file=".env", extra="ignore")

    data: str = "synthetic"
    out: str = "checkpoints"
    n: int = 4000
    length: int = 20
    epochs: int = 30
    hidden: int = 64
    layers: int = 2
    seed: int = 0
    device: str = "cpu"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser (flags default to None so unset flags fall back to settings)."""
    p = argparse.ArgumentParser(prog="bigru-train", description=__doc__)
    p.add_argument("--data", help="'synthetic' or a dataset file")
    p.add_argument("--out", help="checkpoint root directory")
    p.add_argument("--n", type=int, help="synthetic: number of windows")
    p.add_argument("--length", type=int, help="synthetic: timesteps per window")
    p.add_argument("--epochs", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")
    registry_cli.add_publish_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in registry_cli.COMMANDS:
        return registry_cli.main(argv)
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if v is not None and k != "json"}
    try:
        s = TrainSettings(**flags)
    except ValidationError as e:
        print(f"bigru-train: invalid configuration: {e}", file=sys.stderr)
        return 2
    if s.data != "synthetic":
        print("bigru-train: only --data synthetic is supported in this build", file=sys.stderr)
        return 2
    ds = synthetic(s.n, s.length, s.seed)
    tr, va = stratified_split(ds.y, 0.2, s.seed)
    mcfg = ModelConfig(input_dim=ds.n_features, num_classes=len(ds.classes), hidden=s.hidden, layers=s.layers)
    res = fit(ds.subset(tr), ds.subset(va), mcfg, TrainConfig(epochs=s.epochs, seed=s.seed, device=s.device), progress=not args.json)
    path = save_checkpoint(res.checkpoint, s.out)
    params = sum(int(np.prod(v.shape)) for v in res.checkpoint.state_dict.values())
    summary = {
        "checkpoint": str(path),
        "version": res.checkpoint.version,
        "val_accuracy": res.checkpoint.metrics["val_accuracy"],
        "params": params,
        "seconds_per_epoch": res.seconds_per_epoch,
    }
    if args.publish:  # the checkpoint file stays written even when publishing fails
        summary["published"] = registry_cli.publish_trained(args, path)
    print(json.dumps(summary) if args.json else f"wrote {path} (val_accuracy={summary['val_accuracy']:.4f})")
    return 1 if args.publish and not summary["published"] else 0


if __name__ == "__main__":
    sys.exit(main())
