"""``bigru-producer segments``: window results as a timeline of per-device segments (:mod:`producer.segments`).

Plain: reads the results stream(s) from ``--from`` and prints each segment as it closes (a line, or
JSON with ``--json``); without ``--follow`` the open segments are closed at the end.

With ``--group NAME``: reads through the consumer group ``NAME`` (:class:`~producer.group_reader.GroupResultsReader`)
and, for every batch of result entries, writes in ONE transaction (``MULTI``/``EXEC``) the segments it
closed onto the segments stream (``{<prefix>}:segments``), the segmenter's state
(``{<prefix>}:segmenter:<NAME>``) and the entries' acknowledgements. A reader killed at any point has
either done all three or none: restarted with the same consumer name it reloads the state and
re-reads the unacknowledged entries, so every segment is on the stream exactly once. (One reader per
group: the state is the group's. With several shards the transaction spans their results streams,
which a single Redis server allows and a Redis Cluster does not.)
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

import redis

from producer.config import ProducerSettings
from producer.group_reader import EntryId, GroupResultsReader, Item
from producer.results import ResultsReader
from producer.segments import (
    DEFAULT_HOLD,
    DEFAULT_MAX_MISSING,
    DEFAULT_REORDER,
    DEFAULT_SMOOTH,
    Segment,
    Segmenter,
)
from protocol.keys import Keys

#: The command's own options (not :class:`ProducerSettings` fields).
OPTIONS = frozenset({"smooth", "hold", "reorder", "max_missing", "seg_group"})


def add_parser(sub: Any) -> None:
    """Add ``segments`` to the subcommands."""
    p = sub.add_parser("segments", help="turn window results into per-device segments (label, start, end)")
    p.add_argument("--follow", action="store_true", help="keep reading new results")
    p.add_argument("--count", type=int, help="stop after this many window results")
    p.add_argument("--json", action="store_true", help="one JSON object per segment")
    p.add_argument("--from", dest="start", default="0-0", help="stream id to start after (plain reading)")
    p.add_argument("--smooth", type=int, default=DEFAULT_SMOOTH, help="mean of the class probabilities of the last K windows")
    p.add_argument("--hold", type=int, default=DEFAULT_HOLD, help="change the label after H consecutive decisions agree")
    p.add_argument("--reorder", type=int, default=DEFAULT_REORDER,
                   help="wait for a missing window while fewer than N later windows of its device are waiting")
    p.add_argument("--max-missing", type=int, default=DEFAULT_MAX_MISSING,
                   help="more missing windows in a row than this end the open segment")
    p.add_argument("--group", dest="seg_group", metavar="NAME",
                   help="read through this consumer group and write the segments onto the segments stream, "
                        "exactly once across restarts (with the state and the acknowledgements in one transaction)")
    p.add_argument("--consumer", metavar="C", help="with --group: this reader's consumer name (default: the host name)")


def _print(segs: list[Segment], as_json: bool) -> None:
    for sg in segs:
        if as_json:
            print(json.dumps(sg.as_dict()), flush=True)
        else:
            print(f"{sg.key} {sg.label} {sg.start_us / 1e6:.3f}s-{sg.end_us / 1e6:.3f}s "
                  f"conf={sg.confidence:.3f} windows={sg.windows}", flush=True)


class GroupSegments:
    """The exactly-once segments reader of one consumer group (module docstring)."""

    def __init__(self, r: redis.Redis, keys: Keys, group: str, consumer: str, segmenter: Segmenter) -> None:
        self.r, self.keys = r, keys
        self.state_key = keys.segmenter_state(group)
        self.reader = GroupResultsReader(r, keys, group, consumer, start="0")
        raw = r.get(self.state_key)
        self.segmenter = Segmenter.from_state(json.loads(raw)) if raw else segmenter

    def commit(self, ids: list[EntryId], segs: list[Segment]) -> None:
        """Segments, state and acknowledgements in one transaction."""
        pipe = self.r.pipeline(transaction=True)
        for sg in segs:
            pipe.xadd(self.keys.segments, {k: str(v) for k, v in sg.as_dict().items()})
        pipe.set(self.state_key, json.dumps(self.segmenter.state()))
        per: dict[str, list[str]] = {}
        for i in ids:
            per.setdefault(i.stream, []).append(i.id)
        for stream, eids in per.items():
            pipe.xack(stream, self.reader.group, *eids)
        pipe.execute()
        self.reader.ack(ids)  # already acknowledged: clears the reader's in-flight set only

    def step(self, items: list[Item]) -> list[Segment]:
        """Feed one poll's entries; commit; the segments closed."""
        segs: list[Segment] = []
        for _, results in items:
            segs += self.segmenter.add_results(results)
        self.commit([eid for eid, _ in items], segs)
        return segs

    def finish(self) -> list[Segment]:
        """Close every open segment (end of a non-following run) and commit them."""
        segs = self.segmenter.flush()
        self.commit([], segs)
        return segs


def cmd_segments(args: argparse.Namespace, s: ProducerSettings) -> int:
    """Print (and with ``--group`` write) segments as they close."""
    try:
        segmenter = Segmenter(args.smooth, args.hold, args.reorder, args.max_missing)
    except ValueError as e:
        print(f"bigru-producer: {e}", file=sys.stderr)
        return 2
    seen = 0
    try:
        if args.seg_group is None:
            for res in ResultsReader(s.connect(), s.keys, start=args.start, outage=s.outage()).iter(
                    count=args.count, follow=args.follow):
                _print(segmenter.add_results([res]), args.json)
            if not args.follow:
                _print(segmenter.flush(), args.json)
            return 0
        svc = GroupSegments(s.connect(), s.keys, args.seg_group, args.consumer or socket.gethostname(), segmenter)
        while args.count is None or seen < args.count:
            items = svc.reader.poll(count=100, block_ms=1000 if args.follow else None)
            if not items:
                if not args.follow:
                    break
                continue
            seen += sum(len(res) for _, res in items)
            _print(svc.step(items), args.json)
        if not args.follow:
            _print(svc.finish(), args.json)
    except KeyboardInterrupt:
        pass
    return 0
