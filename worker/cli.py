"""``bigru-worker``: serve the classifier from a Redis stream (and ``--check`` / ``status``)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from protocol.security import settings_error
from worker.config import WorkerSettings


def build_parser() -> argparse.ArgumentParser:
    """Flags default to None so that unset flags fall back to the environment and ``.env``."""
    p = argparse.ArgumentParser(prog="bigru-worker", description=__doc__)
    p.add_argument("command", nargs="?", choices=["serve", "status"], default="serve")
    p.add_argument("--redis-url")
    p.add_argument("--prefix")
    p.add_argument("--group")
    p.add_argument("--shards", type=int)
    p.add_argument("--consume-shards", help="shards this worker consumes, e.g. '0,2-3' (default: all)")
    p.add_argument("--checkpoint", help="checkpoint file, version dir or root with 'latest'")
    p.add_argument("--replicas", type=int, help="worker processes to run")
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--max-batch", type=int)
    p.add_argument("--batch-wait", choices=["continuous", "fixed", "slo"], help="batch-fill policy once the model is idle")
    p.add_argument("--max-wait-ms", type=float, help="--batch-wait fixed: longest fill wait")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="run the forward pass on its own thread (default: on)")
    p.add_argument("--torch-threads", type=int)
    p.add_argument("--worker-name")
    p.add_argument("--claim-idle-ms", type=int)
    p.add_argument("--metrics-port", type=int, help="Prometheus endpoint of replica 0 (replica i: port + i)")
    p.add_argument("--burst", action="store_true", default=None, help="drain the stream, then exit")
    p.add_argument("--check", action="store_true", help="exit 0 if this host's replicas are alive")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--watch", action="store_true", help="status: refresh until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="status --watch: seconds between refreshes")
    return p


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    """Settings from the environment/.env, overridden by the flags that were given."""
    skip = {"command", "check", "json", "watch", "interval"}
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in skip}
    return WorkerSettings(**flags)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        print(f"bigru-worker: {settings_error(e)}", file=sys.stderr)
        return 2
    if args.check or args.command == "status":
        from redis.exceptions import RedisClusterException, RedisError

        from worker.health import check
        from worker.status import run

        if args.check:
            try:
                ok, msg = check(settings.connect(), settings.keys,
                                [settings.consumer_name(i) for i in range(settings.replicas)])
            except (RedisError, RedisClusterException) as e:
                ok, msg = False, f"redis unreachable: {e}"
            print(msg)
            return 0 if ok else 1
        r = settings.connect()
        return run(r, settings.keys, as_json=args.json, watch=args.watch, interval=args.interval)
    from worker.supervisor import run_replica, supervise

    if settings.replicas > 1:
        return supervise(settings)
    return run_replica(settings, 0)


if __name__ == "__main__":
    sys.exit(main())
