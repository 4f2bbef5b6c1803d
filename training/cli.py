"""``bigru-train``: train a classifier and write a versioned checkpoint; experiments as subcommands.

``bigru-train [train] --data ...`` trains (the default subcommand). Other subcommands are listed in
:data:`COMMANDS`: functions taking ``argv`` and returning an exit code, each importing its module plainly
when called (so ``--help`` stays fast and every arrow is visible to tools).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from pydantic import ValidationError

from training.settings import add_flags, configs, settings_from_args


def _compare(argv: list[str]) -> int:
    from training.experiments.compare import main as compare

    return compare(argv)


def _export(argv: list[str]) -> int:
    from training.export import main as export

    return export(argv)


def _accuracy(argv: list[str]) -> int:
    from training.experiments.accuracy import main as accuracy

    return accuracy(argv)


def _watch(argv: list[str]) -> int:
    from training.watch import main as watch

    return watch(argv)


def _record(argv: list[str]) -> int:
    from training.recorder import main as record

    return record(argv)


def _candidate(argv: list[str]) -> int:
    from training.watch import candidate_main

    return candidate_main(argv)


#: Registry subcommands (``publish``, ``promote``, ``models``), handled by ``training.registry_cli``.
REGISTRY_COMMANDS = ("publish", "promote", "models")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``train`` subcommand."""
    p = argparse.ArgumentParser(prog="bigru-train", description="Train a sequence classifier and write a versioned checkpoint.",
                                epilog=f"subcommands: {', '.join(COMMANDS)} (bigru-train SUBCOMMAND --help)")
    add_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON summary line (and no progress bar)")
    from training import registry_cli

    registry_cli.add_publish_flags(p)
    return p


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

    opts = RunOptions(**s.group("data"), **s.group("output"), model=model)
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


# Subcommand -> its function (argv) -> exit code.
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train_main, "compare": _compare, "export": _export, "accuracy": _accuracy,
    "watch": _watch, "record": _record, "candidate": _candidate,  # the continuous loop (docs/lifecycle.md#the-loop)
}


def command(name: str) -> Callable[[list[str]], int]:
    """The entry point of subcommand ``name``."""
    return COMMANDS[name]


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
