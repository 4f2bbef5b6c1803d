"""``bigru-worker compare``, ``promote`` and ``shadow-stop``: judging and promoting a shadow candidate."""

from __future__ import annotations

import argparse
import json
import sys

from protocol import registry
from protocol.logs import configure
from worker.compare import read_pairs, render, summarize
from worker.config import WorkerSettings
from worker.redrive import RedriveError, parse_time
from worker.shadow import end_shadow


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of these commands (``--since`` / ``--until`` / ``--json`` are shared with others)."""
    p.add_argument("--windows", type=int, help="compare: the last N shadow windows (default 10000 unless "
                   "--since/--until)")
    p.add_argument("--candidate", help="promote: the version to promote (default: the shadow results' model)")
    p.add_argument("--force", action="store_true", help="promote: even when the verdict is not better/equivalent")
    p.add_argument("--keep-shadow", action="store_true", help="promote: keep the shadow consumer group")


#: The flags above (they steer the command, they set no settings field).
OPTIONS = frozenset({"windows", "candidate", "force", "keep_shadow"})


def _compare_doc(settings: WorkerSettings, args: argparse.Namespace) -> dict[str, object]:
    r = settings.connect()
    since = None if args.since is None else parse_time(args.since)
    until = None if args.until is None else parse_time(args.until)
    windows = args.windows if args.windows is not None or since is not None or until is not None else 10_000
    pairs, unmatched = read_pairs(r, settings.keys, windows=windows, since_ms=since, until_ms=until)
    return summarize(pairs, unmatched)


def compare(settings: WorkerSettings, args: argparse.Namespace) -> int:
    """Print the comparison (``--json``: the document); exit 0, or 2 on a bad argument."""
    configure(settings.log_level, settings.log_json)
    try:
        doc = _compare_doc(settings, args)
    except RedriveError as e:
        print(f"bigru-worker compare: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc) if args.json else render(doc))
    return 0


def promote(settings: WorkerSettings, args: argparse.Namespace) -> int:
    """Make the candidate the registry's latest version (workers reload it through their gate); 1 when the
    verdict does not allow it (without ``--force``), 2 on a bad argument or an unknown version."""
    configure(settings.log_level, settings.log_json)
    r = settings.connect()
    try:
        doc = _compare_doc(settings, args)
    except RedriveError as e:
        print(f"bigru-worker promote: {e}", file=sys.stderr)
        return 2
    models = doc["candidate_models"]
    assert isinstance(models, list)
    version = args.candidate or (models[-1] if models else None)
    if version is None:
        print("bigru-worker promote: no shadow results name a candidate; pass --candidate", file=sys.stderr)
        return 2
    if not (doc["promotable"] or args.force):
        print(json.dumps({"promoted": False, "candidate": version, "verdict": doc["verdict"],
                          "reasons": doc["reasons"]}))
        return 1
    try:
        ptr = registry.promote(r, settings.keys, version)
    except registry.RegistryError as e:
        print(f"bigru-worker promote: {e}", file=sys.stderr)
        return 2
    ended = 0 if args.keep_shadow else end_shadow(r, settings.keys)
    print(json.dumps({"promoted": True, "candidate": version, "seq": ptr.seq, "verdict": doc["verdict"],
                      "shadow_groups_ended": ended}))
    return 0


def shadow_stop(settings: WorkerSettings) -> int:
    """End the shadow consumer group (stop the shadow replicas first); its results stay for ``compare``."""
    print(json.dumps({"shadow_groups_ended": end_shadow(settings.connect(), settings.keys)}))
    return 0
