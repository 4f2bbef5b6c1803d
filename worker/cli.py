"""``bigru-worker``: serve the classifier from a Redis stream (and ``--check`` / ``status`` / ``redrive``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from protocol.settings import cli_settings, settings_from_flags
from worker.config import WorkerSettings
from worker.lifecycle_cli import OPTIONS as LIFECYCLE_OPTIONS
from worker.lifecycle_cli import add_arguments as lifecycle_arguments

#: Flags that steer this command rather than set a :class:`WorkerSettings` field.
COMMAND_OPTIONS = frozenset({"command", "check", "json", "watch", "interval", "reason", "since", "until", "limit",
                             "dry_run"}) | LIFECYCLE_OPTIONS


def _setting(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """``--name`` for the settings field ``name``: its help is the field's description, its default None."""
    help_ = (WorkerSettings.model_fields[name].description or "").replace("%", "%%")
    p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=help_, **kw)


def build_parser() -> argparse.ArgumentParser:
    """Flags default to None so that unset flags fall back to the environment and ``.env``."""
    p = argparse.ArgumentParser(prog="bigru-worker", description=__doc__)
    p.add_argument("command", nargs="?", choices=["serve", "status", "redrive", "init", "compare", "promote",
                                                  "shadow-stop"], default="serve",
                   help="serve (default); status; redrive dead letters; init: create every shard's stream and group; "
                   "compare / promote / shadow-stop: a shadow candidate (docs/lifecycle.md)")
    _setting(p, "redis_url")
    _setting(p, "prefix")
    _setting(p, "group")
    _setting(p, "shards", type=int)
    _setting(p, "consume_shards")
    _setting(p, "checkpoint")
    _setting(p, "replicas", type=int)
    _setting(p, "device", choices=["cpu", "cuda", "auto"])
    _setting(p, "max_batch", type=int)
    _setting(p, "batch_wait", choices=["continuous", "fixed", "slo"])
    _setting(p, "max_wait_ms", type=float)
    _setting(p, "overlap", action=argparse.BooleanOptionalAction)
    _setting(p, "torch_threads", type=int)
    _setting(p, "worker_name")
    _setting(p, "claim_idle_ms", type=int)
    _setting(p, "metrics_port", type=int)
    _setting(p, "burst", action=argparse.BooleanOptionalAction)
    _setting(p, "shadow_version")
    p.add_argument("--check", action="store_true", help="exit 0 if this host's replicas are alive")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--watch", action="store_true", help="status: refresh until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="status --watch: seconds between refreshes")
    p.add_argument("--reason", action="append", help="redrive: move dead letters of this reason back onto the "
                   "input stream (repeatable, e.g. predict_failed, max_deliveries)")
    p.add_argument("--since", help="redrive: dead-lettered at or after; compare/promote: inputs at or after "
                   "(unix seconds, ISO 8601, or an age: 30m, 2h)")
    p.add_argument("--until", help="redrive: dead-lettered at or before; compare/promote: inputs at or before "
                   "(same forms as --since)")
    p.add_argument("--limit", type=int, help="redrive: move at most this many")
    p.add_argument("--dry-run", action="store_true", help="redrive: count what would move, move nothing")
    lifecycle_arguments(p)
    return p


def redrive(settings: WorkerSettings, args: argparse.Namespace) -> int:
    """``bigru-worker redrive``: print the summary as JSON; 2 on a bad argument."""
    import json

    from protocol.logs import configure
    from worker.redrive import RedriveError, Redriver, Selection, parse_time

    configure(settings.log_level, settings.log_json)  # logs to stderr: stdout carries the summary

    if not args.reason:
        print("bigru-worker redrive: --reason is required", file=sys.stderr)
        return 2
    try:
        sel = Selection(frozenset(args.reason), None if args.since is None else parse_time(args.since),
                        None if args.until is None else parse_time(args.until), args.limit)
    except RedriveError as e:
        print(f"bigru-worker redrive: {e}", file=sys.stderr)
        return 2
    print(json.dumps(Redriver(settings.connect(), settings.keys).run(sel, dry_run=args.dry_run).doc()))
    return 0


def init(settings: WorkerSettings) -> int:
    """``bigru-worker init``: create every shard's input stream and the consumer group (idempotent), the
    deploy-time step KEDA's scaler needs (it misreads a stream or group that does not exist yet)."""
    import json

    from worker.reader import ensure_groups

    r = settings.connect()
    ensure_groups(r, settings.keys)
    print(json.dumps({"group": settings.group, "streams": [sk.windows for sk in settings.keys.all_shards()]}))
    return 0


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    """Settings from the environment/.env, overridden by the flags that were given."""
    return settings_from_flags(WorkerSettings, args, COMMAND_OPTIONS)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    settings = cli_settings("bigru-worker", WorkerSettings, args, COMMAND_OPTIONS)
    if settings is None:
        return 2
    if args.command == "redrive":
        return redrive(settings, args)
    if args.command == "init":
        return init(settings)
    if args.command in ("compare", "promote", "shadow-stop"):
        from worker import lifecycle_cli

        if args.command == "shadow-stop":
            return lifecycle_cli.shadow_stop(settings)
        return (lifecycle_cli.compare if args.command == "compare" else lifecycle_cli.promote)(settings, args)
    if args.check or args.command == "status":
        if args.check:
            from worker.health import probe

            ok, msg = probe(settings)
            print(msg)
            return 0 if ok else 1
        from worker.status import run

        r = settings.connect()
        return run(r, settings.keys, as_json=args.json, watch=args.watch, interval=args.interval)
    from worker.supervisor import run_replica, supervise

    if settings.replicas > 1:
        return supervise(settings)
    return run_replica(settings, 0)


if __name__ == "__main__":
    sys.exit(main())
