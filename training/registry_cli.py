"""Registry commands of ``bigru-train``: ``publish PATH``, ``promote VERSION``, ``models``, and ``--publish``.

``training.cli`` hands argv to :func:`main` when its first word is one of its ``REGISTRY_COMMANDS``, and calls
:func:`publish_trained` after training when ``--publish`` was given (flags from :func:`add_publish_flags`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from protocol import registry
from protocol.redisconn import redacted
from protocol.security import settings_error
from protocol.settings import PrefixSettings
from training.publish import publish_checkpoint


class RegistrySettings(PrefixSettings):
    """Where the registry lives (env prefix ``BIGRU_``, shared with the worker; flags override).

    Connection settings (TLS files, password sources) and the key prefix are the workers'
    :class:`protocol.settings.PrefixSettings` (the registry's keys depend on the prefix only).
    """

    def client(self) -> redis.Redis:
        """A client with the workers' retry policy, TLS and password settings."""
        return self.connect()


def add_publish_flags(p: argparse.ArgumentParser) -> None:
    """``--publish`` and the registry location flags, for the training command."""
    p.add_argument("--publish", action="store_true", help="after training, publish the checkpoint to the registry")
    p.add_argument("--redis-url", help="registry Redis URL (BIGRU_REDIS_URL)")
    p.add_argument("--prefix", help="registry key prefix (BIGRU_PREFIX)")


def _settings(args: argparse.Namespace) -> RegistrySettings:
    flags = {k: getattr(args, k) for k in ("redis_url", "prefix") if getattr(args, k, None) is not None}
    return RegistrySettings(**flags)


def publish_path(s: RegistrySettings, path: str | Path, *, set_latest: bool = True) -> dict[str, Any]:
    """Publish the checkpoint at ``path`` (file, version dir or root); returns a JSON-able summary."""
    from training.model.checkpoint_file import CheckpointError, resolve_path

    try:
        file = resolve_path(path)
        data = file.read_bytes()
    except (CheckpointError, OSError) as e:
        raise registry.RegistryError(f"cannot read a checkpoint at {path}: {e}") from e
    entry, ptr = publish_checkpoint(s.client(), s.keys, data, source=str(file), set_latest=set_latest)
    return {
        "version": entry.version, "sha256": entry.sha256, "bytes": entry.size, "params": entry.params,
        "val_accuracy": entry.metrics.get("val_accuracy"), "golden": entry.golden_size,
        "latest": ptr is not None, "seq": ptr.seq if ptr else None,
    }


def publish_trained(args: argparse.Namespace, path: str | Path) -> dict[str, Any] | None:
    """The ``--publish`` step after training: the summary, or None after printing why it failed."""
    try:
        s = _settings(args)
    except ValidationError as e:
        print(f"bigru-train: {settings_error(e)}", file=sys.stderr)
        return None
    _, doc = _run(s, "publish", lambda: publish_path(s, path))
    if doc is not None and not getattr(args, "json", False):
        print(_publish_line(doc))
    return doc


def _models(s: RegistrySettings) -> dict[str, Any]:
    r = s.client()
    ptr = registry.read_pointer(r, s.keys)
    rows = []
    for e in registry.entries(r, s.keys):
        refused = registry.refusals(r, s.keys, e.version)
        rows.append({"version": e.version, "val_accuracy": e.metrics.get("val_accuracy"), "params": e.params,
                     "bytes": e.size, "sha256": e.sha256, "refused_by": sorted(refused),
                     "refusal_reasons": sorted({n["reason"] for n in refused.values()})})
    return {"latest": None if ptr is None else asdict(ptr), "models": rows}


def build_parser() -> argparse.ArgumentParser:
    """Parser of the registry subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="registry Redis URL (BIGRU_REDIS_URL)")
    common.add_argument("--prefix", help="registry key prefix (BIGRU_PREFIX)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    p = argparse.ArgumentParser(prog="bigru-train", description="model registry commands")
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", parents=[common], help="register a checkpoint and point latest at it")
    pub.add_argument("path", help="checkpoint file, version directory or root with 'latest'")
    pub.add_argument("--no-latest", action="store_true", help="register only; leave latest where it is")
    pro = sub.add_parser("promote", parents=[common], help="point latest at a registered version (rollback)")
    pro.add_argument("version")
    sub.add_parser("models", parents=[common], help="list registered versions, latest and refusals")
    return p


def _publish_line(doc: dict[str, Any]) -> str:
    return (f"published {doc['version']} (sha256 {doc['sha256'][:12]}…, val_accuracy={doc['val_accuracy']}, "
            f"latest={doc['latest']}, seq={doc['seq']})")


def _run(s: RegistrySettings, command: str, op: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
    """Run ``op``, turning the expected failures into a message on stderr and exit code 1."""
    try:
        return 0, op()
    except registry.RegistryError as e:
        print(f"bigru-train {command}: {e}", file=sys.stderr)
    except redis.ConnectionError as e:
        print(f"bigru-train {command}: cannot reach Redis at {redacted(s.redis_url)}: {e}", file=sys.stderr)
    return 1, None


def _models_text(doc: dict[str, Any]) -> str:
    latest = (doc["latest"] or {}).get("version")
    lines = [f"{'*' if m['version'] == latest else ' '} {m['version']}  val_acc={m['val_accuracy']}  "
             f"params={m['params']}  refused_by={','.join(m['refused_by']) or '-'}" for m in doc["models"]]
    return "\n".join(lines) or "no models registered"


def main(argv: list[str]) -> int:
    """Run one registry subcommand; 0 on success, 1 on a refused operation, 2 on bad configuration."""
    args = build_parser().parse_args(argv)
    try:
        s = _settings(args)
    except ValidationError as e:
        print(f"bigru-train: {settings_error(e)}", file=sys.stderr)
        return 2
    if args.command == "publish":
        code, doc = _run(s, "publish", lambda: publish_path(s, args.path, set_latest=not args.no_latest))
        text = _publish_line(doc) if doc else ""
    elif args.command == "promote":
        code, doc = _run(s, "promote", lambda: asdict(registry.promote(s.client(), s.keys, args.version)))
        text = f"latest -> {doc['version']} (seq {doc['seq']})" if doc else ""
    else:
        code, doc = _run(s, "models", lambda: _models(s))
        text = _models_text(doc) if doc else ""
    if doc is not None:
        print(json.dumps(doc, default=str) if args.json else text)
    return code
