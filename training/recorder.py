"""``bigru-train record``: keep served windows for a while and join them with the labels that arrive later.

The recorder reads every shard's input stream through its own consumer group
(:attr:`protocol.keys.Keys.recorder_group`, ``<group>:recorder``, created at the streams' end) and the
labels stream through a group of the same name (created at its start, so no label is missed). It
acknowledges an input entry once its windows are retained in memory (:class:`training.live.Retained`:
bounded by age, count and bytes), so like the shadow group it holds back input trimming only while
it is stopped; a stopped recorder holds back every entry written since it stopped
(docs/lifecycle.md#the-loop). Windows without a ``cid`` cannot be labelled and are not kept.
Labelled windows are written to ``live_dir`` (:func:`training.live.write_live`); labels it cannot use
go to ``{bigru}:labels:refused`` with their reason. Its counters are the ``{prefix}:recorder`` hash.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import redis
import structlog

from protocol import registry
from protocol.entries import MultiWindow, Window, decode_entries
from protocol.labels import LabelError, decode_label, refusal_fields
from protocol.limits import Limits
from protocol.settings import cli_settings
from training.live import Joined, Joiner, Retained, Served, write_live
from training.loop_settings import LoopSettings

log = structlog.get_logger("recorder")


class RecorderError(RuntimeError):
    """The recorder cannot start (no model registered to take the classes from)."""


def create_groups(r: redis.Redis, s: LoopSettings) -> None:
    """The recorder's group on every input stream (at its end) and on the labels stream (at its start)."""
    keys = s.keys
    for stream, start in [(sk.windows, "$") for sk in keys.all_shards()] + [(keys.labels, "0")]:
        try:
            r.xgroup_create(stream, keys.recorder_group, id=start, mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


@dataclass
class Counts:
    """What the recorder did (published to the ``{prefix}:recorder`` hash)."""

    windows: int = 0
    no_cid: int = 0
    labels: int = 0
    joined: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    files: int = 0


class Recorder:
    """One recorder process: :meth:`step` reads, joins and writes; :meth:`run` loops until stopped."""

    def __init__(self, r: redis.Redis, s: LoopSettings, consumer: str | None = None) -> None:
        self.r, self.s, self.keys = r, s, s.keys
        self.consumer = consumer or socket.gethostname()
        ptr = registry.read_pointer(r, self.keys)
        entry = registry.get_entry(r, self.keys, ptr.version) if ptr else None
        if ptr is None or entry is None:
            raise RecorderError("no model is registered (bigru-train publish): the recorder takes its classes from latest")
        self.model = ptr.version
        self.classes = list(entry.classes)
        self.store = Retained(int(s.recorder_retain_s * 1000), s.recorder_max_windows, int(s.recorder_max_mb * 2**20))
        self.joiner = Joiner(self.store, self.classes, int(s.recorder_label_wait_s * 1000))
        self.buffer: list[Joined] = []
        self.counts = Counts()
        self._last_flush = time.monotonic()
        self._last_pointer = 0.0
        self.limits = Limits()
        create_groups(r, s)

    def _read_windows(self, block_ms: int) -> int:
        """Read each shard's new entries (one command per shard: a cluster keeps shards in different slots);
        returns the entries read (sleeps ``block_ms`` when there were none)."""
        entries = 0
        now = int(time.time() * 1000)
        for sk in self.keys.all_shards():
            reply = self.r.xreadgroup(self.keys.recorder_group, self.consumer, {sk.windows: ">"}, count=500)
            for stream, rows in reply or []:
                for item in decode_entries([f for _, f in rows], self.limits):
                    if isinstance(item, Window):
                        self._keep(item.cid, item.x, now)
                    elif isinstance(item, MultiWindow):
                        cids = item.cids or [""] * len(item.x)
                        for i, x in enumerate(item.x):
                            if i not in item.bad:
                                self._keep(cids[i] or item.cid, x, now)
                if rows:
                    self.r.xack(stream, self.keys.recorder_group, *[i for i, _ in rows])
                    entries += len(rows)
        if not entries and block_ms:
            time.sleep(block_ms / 1000)
        return entries

    def _keep(self, cid: str, x: np.ndarray, now_ms: int) -> None:
        if not cid:
            self.counts.no_cid += 1
            return
        self.store.add(cid, Served(x.copy(), now_ms, self.model))
        self.counts.windows += 1
        self.buffer.extend(self.joiner.window_arrived(cid))

    def _read_labels(self) -> int:
        reply = self.r.xreadgroup(self.keys.recorder_group, self.consumer, {self.keys.labels: ">"}, count=1000)
        now = int(time.time() * 1000)
        n = 0
        for _, rows in reply or []:
            for _eid, fields in rows:
                n += 1
                try:
                    lab = decode_label(fields)
                except LabelError as e:
                    self._refuse(fields, e.reason, str(e))
                    continue
                self.buffer.extend(self.joiner.label(lab, now))
            if rows:
                self.r.xack(self.keys.labels, self.keys.recorder_group, *[i for i, _ in rows])
        self.counts.labels += n
        return n

    def _refuse(self, fields: dict[bytes, bytes], reason: str, detail: str) -> None:
        self.r.xadd(self.keys.labels_refused, refusal_fields(fields, reason, detail), maxlen=100_000, approximate=True)
        self.counts.refused[reason] = self.counts.refused.get(reason, 0) + 1
        log.info("label_refused", reason=reason, detail=detail)

    def step(self, block_ms: int = 200) -> None:
        """Read new windows and labels, join, expire, and write a dataset file when one is due."""
        self._follow_pointer()
        self._read_windows(block_ms)
        self._read_labels()
        now = int(time.time() * 1000)
        self.store.expire(now)
        self.joiner.expire(now)
        for lab, reason, detail in self.joiner.refused:
            fields = {b"v": b"1", b"cid": lab.cid.encode(), b"label": lab.label.encode(), b"ts": str(lab.ts_us).encode()}
            self._refuse(fields, reason, detail)
        self.joiner.refused.clear()
        due = time.monotonic() - self._last_flush >= self.s.recorder_flush_s
        if len(self.buffer) >= self.s.recorder_flush_windows or (self.buffer and due):
            self.flush()
        self.publish_counts()

    def _follow_pointer(self) -> None:
        if time.monotonic() - self._last_pointer < 1.0:
            return
        self._last_pointer = time.monotonic()
        ptr = registry.read_pointer(self.r, self.keys)
        if ptr is not None:
            self.model = ptr.version

    def flush(self) -> None:
        """Write the labelled windows held (if any) to ``live_dir``."""
        if self.buffer:
            path = write_live(self.s.live_dir, self.buffer, self.classes)
            self.counts.joined += len(self.buffer)
            self.counts.files += 1
            log.info("live_written", path=str(path), windows=len(self.buffer))
            self.buffer = []
        self._last_flush = time.monotonic()

    def publish_counts(self) -> None:
        """The counters and the store's size in the ``{prefix}:recorder`` hash."""
        c = self.counts
        self.r.hset(self.keys.recorder, mapping={
            "windows": c.windows, "no_cid": c.no_cid, "labels": c.labels, "joined": c.joined + len(self.buffer),
            "files": c.files, "refused": json.dumps(c.refused), "retained": len(self.store),
            "retained_bytes": self.store.bytes, "evicted": self.store.evicted, "waiting_labels": self.joiner.waiting,
            "ts": time.time()})

    def run(self, stop_after_s: float | None = None) -> None:
        """Loop over :meth:`step` (until ``stop_after_s``, or forever); writes what it holds on the way out."""
        t0 = time.monotonic()
        try:
            while stop_after_s is None or time.monotonic() - t0 < stop_after_s:
                self.step()
        finally:
            self.flush()
            self.publish_counts()


def main(argv: list[str]) -> int:
    """``bigru-train record``: run the recorder (settings: :class:`training.loop_settings.LoopSettings`)."""
    p = argparse.ArgumentParser(prog="bigru-train record", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, help="stop after this long (default: run until interrupted)")
    p.add_argument("--consumer", help="consumer name in the recorder's group (default: the host name)")
    args = p.parse_args(argv)
    from protocol.logs import configure

    configure()
    s = cli_settings("bigru-train record", LoopSettings, argparse.Namespace())
    if s is None:
        return 2
    try:
        rec = Recorder(s.connect(), s, args.consumer)
    except RecorderError as e:
        print(f"bigru-train record: {e}", file=sys.stderr)
        return 2
    try:
        rec.run(args.seconds)
    except KeyboardInterrupt:
        pass
    return 0
