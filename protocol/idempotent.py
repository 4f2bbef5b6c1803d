"""Idempotent XADD: a retried write of the same (producer id, idempotency id) returns the first entry id.

Two paths behind :class:`IdempotentWriter`, chosen once per writer by :func:`detect_mode`:

- ``native`` (Redis >= 8.6): ``XADD <stream> IDMP <producer> <iid> * field value ...``; the server
  keeps each stream's ids for ``IDMP-DURATION`` seconds (at most ``IDMP-MAXSIZE`` per producer), set
  once per stream with ``XCFGSET <stream> IDMP-DURATION <s> IDMP-MAXSIZE <n>``.
- ``script`` (older servers): :data:`IDMP_LUA` by ``EVALSHA``. It returns the id stored in the dedup
  key :meth:`protocol.keys.ShardKeys.idmp` when that key exists, else ``XADD``s and stores the new
  id there with ``EX <window>``. Atomic, and single-slot (the dedup key has the stream's hash tag),
  so it is valid on a Redis Cluster.

Either way a write can be appended to a pipeline (:meth:`IdempotentWriter.add`), so redis-py's own
retry of a pipeline after a dropped connection re-sends the same ids and gets the first entry ids back.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, Literal

import msgpack
import redis
import redis.asyncio
import structlog

from protocol.cluster import is_cluster
from protocol.keys import Keys, ShardKeys
from protocol.replies import as_str

Mode = Literal["script", "native"]

#: The first server version with ``XADD ... IDMP``.
NATIVE_VERSION = (8, 6)
#: ``XCFGSET``'s ranges: ``IDMP-DURATION`` 1..86 400 s, ``IDMP-MAXSIZE`` 1..10 000 ids per producer.
MAX_WINDOW_S = 86_400
NATIVE_MAXSIZE = 10_000
#: How often a writer re-checks, on the native path, a shard stream that did not exist yet.
_RECHECK_S = 1.0

#: KEYS: stream, dedup key. ARGV: window (s), then the entry's field/value pairs.
#: Returns ``{entry id, 1}`` for a duplicate, ``{entry id, 0}`` for a new entry.
IDMP_LUA = """
local id = redis.call('GET', KEYS[2])
if id then return {id, 1} end
id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {id, 0}
"""

#: The same for many entries of one shard in one call (:meth:`IdempotentWriter.add_many`). KEYS: stream,
#: then one dedup key per entry. ARGV: window (s), one msgpack array of the entries' field/value lists.
#: Returns one ``{entry id, duplicate}`` pair per entry, in order. One call instead of one per entry
#: saves the per-call cost that made the per-entry script a third of the plain XADD rate.
IDMP_MANY_LUA = """
local recs = cmsgpack.unpack(ARGV[2])
local out = {}
for i = 1, #recs do
  local key = KEYS[i + 1]
  local id = redis.call('GET', key)
  if id then
    out[i] = {id, 1}
  else
    id = redis.call('XADD', KEYS[1], '*', unpack(recs[i]))
    redis.call('SET', key, id, 'EX', ARGV[1])
    out[i] = {id, 0}
  end
end
return out
"""

log = structlog.get_logger("protocol.idempotent")


class IdempotenceError(RuntimeError):
    """The idempotent path could not be set up (e.g. the script could not be loaded)."""


def _tokens(reply: Any) -> Iterable[str]:
    """Every string in a nested ``COMMAND DOCS`` reply (lists, dicts, bytes), upper-cased."""
    if isinstance(reply, (bytes, str)):
        yield as_str(reply).upper()
    elif isinstance(reply, Mapping):
        for k, v in reply.items():
            yield from _tokens(k)
            yield from _tokens(v)
    elif isinstance(reply, (list, tuple)):
        for v in reply:
            yield from _tokens(v)


def mode_from_docs(reply: Any) -> Mode | None:
    """``native`` when a ``COMMAND DOCS XADD`` reply documents the ``IDMP`` token, ``script`` when it
    documents XADD without it, None when it says nothing (empty: the server does not know the command)."""
    tokens = set(_tokens(reply))
    if "XADD" not in tokens:
        return None
    return "native" if "IDMP" in tokens else "script"


def mode_from_version(version: str) -> Mode:
    """``native`` for a ``redis_version`` of 8.6 or later, else ``script``."""
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return "script"
    return "native" if parts >= NATIVE_VERSION else "script"


def _version(info: Mapping[str, Any]) -> str:
    return str(info.get("redis_version", "0"))


def _node_mode(docs: Any, info: Callable[[], Any]) -> Mode:
    """A node's mode from its ``COMMAND DOCS XADD`` reply (an exception where that failed), else from
    its ``INFO server`` reply (``info()``; an exception where that failed), else ``script``."""
    mode = None if isinstance(docs, Exception) else mode_from_docs(docs)
    if mode is None:
        reply = info()
        mode = None if isinstance(reply, Exception) else mode_from_version(_version(reply))
    return mode or "script"


def _call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)``, or the Redis error it raised (a refused command included)."""
    try:
        return fn(*args, **kw)
    except redis.ResponseError as e:
        return e


def detect_mode(r: Any) -> Mode:
    """How ``r``'s server writes idempotently: ``COMMAND DOCS XADD`` (does it document ``IDMP``?),
    else (denied, or Redis < 7) the ``INFO server`` version, else ``script``. On a Redis Cluster every
    primary is asked, and ``native`` needs all of them (a cluster mid-upgrade uses the script)."""
    targets: list[dict[str, Any]] = [{"target_nodes": n} for n in r.get_primaries()] if is_cluster(r) else [{}]
    modes = {_node_mode(_call(r.execute_command, "COMMAND DOCS", "XADD", **t),
                        functools.partial(_call, r.execute_command, "INFO", "server", **t)) for t in targets}
    return "native" if modes == {"native"} else "script"


async def adetect_mode(r: redis.asyncio.Redis) -> Mode:
    """:func:`detect_mode` on ``redis.asyncio`` (a single server)."""
    try:
        docs: Any = await r.execute_command("COMMAND DOCS", "XADD")
    except redis.ResponseError as e:
        docs = e
    try:
        info: Any = await r.info("server")
    except redis.ResponseError as e:
        info = e
    return _node_mode(docs, lambda: info)


def flat(fields: Mapping[Any, Any]) -> list[Any]:
    """``{field: value}`` as ``[field, value, ...]``."""
    return list(chain.from_iterable(fields.items()))


def native_xadd_args(stream: str, producer: str, iid: str, fields: Mapping[Any, Any]) -> list[Any]:
    """The native command: ``XADD <stream> IDMP <producer> <iid> * field value ...``."""
    return ["XADD", stream, "IDMP", producer, iid, "*", *flat(fields)]


def xcfgset_args(stream: str, window_s: int, maxsize: int = NATIVE_MAXSIZE) -> list[Any]:
    """``XCFGSET <stream> IDMP-DURATION <window_s> IDMP-MAXSIZE <maxsize>`` (the stream must exist)."""
    return ["XCFGSET", stream, "IDMP-DURATION", window_s, "IDMP-MAXSIZE", maxsize]


def needs_config(info: Mapping[str, Any], window_s: int, maxsize: int = NATIVE_MAXSIZE) -> bool:
    """Whether a stream's ``XINFO STREAM`` reply shows other IDMP settings than wanted (``XCFGSET``
    clears the stream's kept ids, so it is sent only then)."""
    got = (info.get("idmp-duration"), info.get("idmp-maxsize"))
    return tuple(int(v) if v is not None else None for v in got) != (window_s, maxsize)


def entry_id(reply: Any) -> tuple[str, bool | None]:
    """The entry id of an idempotent write's reply and whether it was a duplicate (None: unknown, the
    native reply does not say); a plain ``XADD`` reply gives ``(id, None)`` too."""
    if isinstance(reply, (list, tuple)):
        return as_str(reply[0]), bool(int(reply[1]))
    return as_str(reply), None


class IdempotentWriter:
    """Appends idempotent writes of producer ``producer_id`` to ``keys``' input streams.

    ``window_s``: how long an id is kept (a write of the same id after that is a new entry).
    ``mode``: ``auto`` (detect on :meth:`prepare`), or force ``script`` / ``native``.
    """

    def __init__(self, keys: Keys, producer_id: str, window_s: int, mode: Mode | Literal["auto"] = "auto") -> None:
        if not 1 <= window_s <= MAX_WINDOW_S:
            raise ValueError(f"idempotency window {window_s}s outside 1..{MAX_WINDOW_S}")
        keys.shard(0).idmp(producer_id, "x")  # validates the producer id
        self.keys = keys
        self.producer_id = producer_id
        self.window_s = window_s
        self.mode: Mode | None = None if mode == "auto" else mode
        self._forced = mode != "auto"
        self._sha = ""
        self._sha_many = ""
        self._packer = msgpack.Packer(use_bin_type=False)  # Redis' cmsgpack predates the bin types
        self._unconfigured: set[str] = {sk.windows for sk in keys.all_shards()}
        self._checked = float("-inf")

    @property
    def ready(self) -> bool:
        """Set up, with nothing left to check."""
        return self.mode is not None and bool(self._sha or self.mode == "native") and not (
            self.mode == "native" and self._unconfigured)

    def prepare(self, r: Any) -> None:
        """Detect the mode and load the script (once), configure native streams (once each)."""
        if self.ready:
            return
        if self.mode is None:
            self.mode = detect_mode(r)
            log.info("idempotence_mode", mode=self.mode, producer=self.producer_id, window_s=self.window_s)
        if self.mode == "script":
            self.reload(r)
        elif self._due():
            for stream in sorted(self._unconfigured):
                try:
                    info = r.xinfo_stream(stream)
                except redis.ResponseError:  # no such key yet: configured once it exists
                    continue
                self._configure(r, stream, info)

    async def aprepare(self, r: redis.asyncio.Redis) -> None:
        """:meth:`prepare` on ``redis.asyncio``."""
        if self.ready:
            return
        if self.mode is None:
            self.mode = await adetect_mode(r)
            log.info("idempotence_mode", mode=self.mode, producer=self.producer_id, window_s=self.window_s)
        if self.mode == "script":
            self._sha = as_str(await r.script_load(IDMP_LUA))
            self._sha_many = as_str(await r.script_load(IDMP_MANY_LUA))
        elif self._due():
            for stream in sorted(self._unconfigured):
                try:
                    info = await r.xinfo_stream(stream)
                except redis.ResponseError:
                    continue
                if needs_config(info, self.window_s):
                    await r.execute_command(*xcfgset_args(stream, self.window_s))
                self._unconfigured.discard(stream)

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._checked < _RECHECK_S:
            return False
        self._checked = now
        return True

    def _configure(self, r: Any, stream: str, info: Mapping[str, Any]) -> None:
        if needs_config(info, self.window_s):
            r.execute_command(*xcfgset_args(stream, self.window_s))
            log.info("idempotence_configured", stream=stream, window_s=self.window_s, maxsize=NATIVE_MAXSIZE)
        self._unconfigured.discard(stream)

    def forget_script(self) -> None:
        """The server lost its script cache (``NOSCRIPT``): the next :meth:`prepare`/:meth:`aprepare` loads it."""
        self._sha = self._sha_many = ""

    def reload(self, r: Any) -> None:
        """(Re)load the script, e.g. after the server lost its script cache (``NOSCRIPT``)."""
        try:
            self._sha = as_str(r.script_load(IDMP_LUA))
            self._sha_many = as_str(r.script_load(IDMP_MANY_LUA))
        except redis.ResponseError as e:
            raise IdempotenceError(f"cannot load the idempotent-XADD script: {e}") from e

    def add(self, target: Any, sk: ShardKeys, fields: Mapping[Any, Any], iid: str) -> Any:
        """Append (pipeline) or send (client) the idempotent write of ``fields`` to ``sk``'s input stream;
        call :meth:`prepare` first. Its reply decodes with :func:`entry_id`."""
        if self.mode == "native":
            return target.execute_command(*native_xadd_args(sk.windows, self.producer_id, iid, fields))
        if not self._sha:
            raise IdempotenceError("IdempotentWriter.add before prepare")
        # execute_command, not .evalsha: a cluster pipeline refuses the method but routes the command by its keys.
        return target.execute_command("EVALSHA", self._sha, 2, sk.windows, sk.idmp(self.producer_id, iid),
                                      self.window_s, *flat(fields))

    @property
    def batches(self) -> bool:
        """Whether :meth:`add_many` writes many entries in one call (the script path; call :meth:`prepare` first)."""
        return self.mode == "script"

    def add_many(self, target: Any, sk: ShardKeys, items: Sequence[tuple[Mapping[Any, Any], str]]) -> Any:
        """Append (pipeline) or send (client) the idempotent writes of ``items`` (fields, idempotency id) to
        ``sk``'s input stream in ONE script call (only where :attr:`batches`); its reply is one
        :func:`entry_id`-decodable pair per item, in order."""
        if not self._sha_many:
            raise IdempotenceError("IdempotentWriter.add_many before prepare (or on the native path)")
        records = self._packer.pack([flat(fields) for fields, _ in items])
        return target.execute_command("EVALSHA", self._sha_many, 1 + len(items), sk.windows,
                                      *(sk.idmp(self.producer_id, iid) for _, iid in items), self.window_s, records)
