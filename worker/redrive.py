"""``bigru-worker redrive``: move dead letters back onto their shard's input stream, each exactly once.

A dead letter keeps the original fields of its input (``protocol.wire.encode_dead``); redriving it
re-adds those fields (without ``dead.*``) as a new input entry. One Lua script per batch of dead
letters ``XDEL``\\ s each one and, only when that ``XDEL`` removed it, ``XADD``\\ s its fields to the input
stream: two redrives running at once (or a redrive retried after a lost reply) move each dead letter
once. The dead-letter and input streams of a shard share a hash tag, so the script stays in one
Redis Cluster slot.

Selection: the dead letter's reason (``dead.reason``) and when it was dead-lettered (its entry id's
milliseconds, ``--since`` / ``--until``). Dead letters that cannot be redriven are skipped and
counted by why: ``truncated`` (a field over 64 KiB was replaced by a note; predict_failed dead
letters keep their validated fields whole) and ``multi_window`` (the dead windows of a multi-window
entry whose other windows were answered: redriving would answer those twice).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import Any

import msgpack
import redis
import structlog

from protocol.keys import Keys, ShardKeys
from protocol.replies import as_str
from protocol.results import DEAD_PREFIX, is_truncated

# KEYS = dead-letter stream, input stream (one hash tag); ARGV[1] = msgpack array of
# [dead id, [field, value, ...]]. Returns, per record, the new input id or '' when the dead letter
# was already gone (moved by a concurrent redrive). '' rather than false: a nil ends a Lua array reply.
REDRIVE_LUA = """
local records = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #records do
  local rec = records[i]
  if redis.call('XDEL', KEYS[1], rec[1]) == 1 then
    out[i] = redis.call('XADD', KEYS[2], '*', unpack(rec[2]))
  else
    out[i] = ''
  end
end
return out
"""

#: Dead letters per script call (and per XRANGE page).
BATCH = 100
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RedriveError(ValueError):
    """A bad redrive argument (a time that does not parse)."""


def parse_time(text: str, now: float | None = None) -> int:
    """Unix milliseconds of ``text``: unix seconds (``1764000000``), ISO 8601 (``2026-11-27T10:00:00+00:00``;
    local time without an offset), or an age (``30m``, ``2h``, ``1d``: that long ago)."""
    now = time.time() if now is None else now
    m = _RELATIVE.fullmatch(text.strip())
    if m:
        return int((now - float(m.group(1)) * _UNITS[m.group(2)]) * 1000)
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError as e:
        raise RedriveError(f"bad time {text!r}: unix seconds, ISO 8601, or an age like 30m, 2h, 1d") from e


@dataclass(frozen=True)
class Selection:
    """Which dead letters to move: reasons, a dead-lettering time range (unix ms, inclusive), a cap."""

    reasons: frozenset[str]
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None  # at most this many moved (or, in a dry run, movable)


@dataclass
class Summary:
    """What a redrive did (``dry_run``: what it would do)."""

    dry_run: bool
    moved: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why -> count
    by_reason: Counter[str] = field(default_factory=Counter)  # dead.reason -> moved
    moved_ids: list[tuple[str, str]] = field(default_factory=list)  # (dead-letter id, new input id)

    def doc(self) -> dict[str, Any]:
        """The summary as printed by the CLI (JSON)."""
        return {"dry_run": self.dry_run, "moved": self.moved, "moved_by_reason": dict(self.by_reason),
                "skipped": dict(self.skipped)}


def _why_not(fields: dict[bytes, bytes]) -> str | None:
    """Why a dead letter cannot be redriven, or None."""
    if b"dead.windows" in fields:
        return "multi_window"
    original = [v for k, v in fields.items() if not k.startswith(DEAD_PREFIX)]
    if not original:
        return "no_fields"
    if any(is_truncated(v) for v in original):
        return "truncated"
    return None


def _scan(r: redis.Redis, sk: ShardKeys, sel: Selection) -> Iterator[list[tuple[str, dict[bytes, bytes]]]]:
    """Pages of the shard's dead letters in the selected time range."""
    start = "-" if sel.since_ms is None else str(sel.since_ms)
    end = "+" if sel.until_ms is None else str(sel.until_ms)
    while True:
        page = r.xrange(sk.dead, min=start, max=end, count=BATCH)
        if not page:
            return
        yield [(as_str(i), f) for i, f in page]
        if len(page) < BATCH:
            return
        ms, seq = as_str(page[-1][0]).split("-")
        start = f"{ms}-{int(seq) + 1}"


class Redriver:
    """Moves selected dead letters back onto the input streams (see the module docstring)."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._script = r.register_script(REDRIVE_LUA)
        self._packer = msgpack.Packer(use_bin_type=False)  # Redis' cmsgpack predates the bin types
        self.log = structlog.get_logger("redrive")

    def run(self, sel: Selection, dry_run: bool = False) -> Summary:
        """Redrive every shard's selected dead letters; returns the summary."""
        out = Summary(dry_run)
        for sk in self.keys.all_shards():
            self._shard(sk, sel, out)
        self.log.info("redrive_done", **out.doc())
        return out

    def _room(self, sel: Selection, out: Summary) -> int:
        return BATCH if sel.limit is None else max(0, sel.limit - out.moved)

    def _shard(self, sk: ShardKeys, sel: Selection, out: Summary) -> None:
        for page in _scan(self.r, sk, sel):
            todo: list[tuple[str, str, dict[bytes, bytes]]] = []
            for dead_id, fields in page:
                reason = fields.get(b"dead.reason", b"").decode(errors="replace")
                if reason not in sel.reasons:
                    continue
                why = _why_not(fields)
                if why is not None:
                    out.skipped[why] += 1
                    continue
                todo.append((dead_id, reason, {k: v for k, v in fields.items() if not k.startswith(DEAD_PREFIX)}))
            todo = todo[: self._room(sel, out)]
            if out.dry_run:
                out.moved += len(todo)
                out.by_reason.update(reason for _, reason, _ in todo)
            else:
                self._move(sk, todo, out)
            if sel.limit is not None and out.moved >= sel.limit:
                return

    def _move(self, sk: ShardKeys, todo: list[tuple[str, str, dict[bytes, bytes]]], out: Summary) -> None:
        if not todo:
            return
        records = [[dead_id, list(chain.from_iterable(f.items()))] for dead_id, _, f in todo]
        got = self._script(keys=[sk.dead, sk.windows], args=[self._packer.pack(records)])
        for (dead_id, reason, _), new_id in zip(todo, got):
            if new_id:
                out.moved += 1
                out.by_reason[reason] += 1
                out.moved_ids.append((dead_id, as_str(new_id)))
            else:
                out.skipped["already_moved"] += 1
        self.log.info("redriven", shard=sk.shard, moved=sum(1 for n in got if n), batch=len(todo))

