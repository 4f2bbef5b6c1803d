"""Reading the results stream(s) from Python (what ``bigru-producer results`` uses).

This reader keeps its position in the process only; a service that must handle every result, shared
by replicas and with acknowledgements, reads through a consumer group instead
(``producer.group_reader.GroupResultsReader``, ``bigru-producer results --group``).
"""

from __future__ import annotations

from collections.abc import Generator

import redis

from producer.polling import drain
from protocol.keys import Keys
from protocol.outage import OutageBudget
from protocol.results import Result, decode_any_result


class ResultsReader:
    """Iterates results in stream order per shard, merging shards; keeps its position.

    Results are per window: a multi-window result entry (``protocol.results``) yields one
    :class:`Result` per window of its input (a ``WindowResult``, with ``index`` and ``reason``).
    Every read rides out a Redis outage of up to ``outage`` (default 60 s), then raises
    :class:`~protocol.outage.RedisOutageError`.
    """

    def __init__(self, r: redis.Redis, keys: Keys, start: str = "0-0", outage: OutageBudget | None = None) -> None:
        self.r = r
        self.outage = outage if outage is not None else OutageBudget.for_client(r)
        self.keys = keys
        self.positions = {sk.results: start for sk in keys.all_shards()}
        self._pending: list[tuple[str, Result]] = []  # read from Redis but not yet handed out by iter()

    def poll(self, count: int = 1000, block_ms: int | None = None) -> list[tuple[str, Result]]:
        """Read up to ``count`` new result entries per shard (blocking up to ``block_ms`` when given).

        Returns (result entry id, result) per window, so a multi-window entry gives several items
        with the same id. Items read but left over by an earlier :meth:`iter` come first (without
        reading Redis).
        """
        if self._pending:
            out, self._pending = self._pending, []
            return out
        out = []
        for stream, pos in self.positions.items():
            resp = self.outage.call(lambda stream=stream, pos=pos: self.r.xread(  # type: ignore[misc]
                {stream: pos}, count=count, block=block_ms), operation="results")
            for _, entries in resp or []:
                for eid, fields in entries:
                    sid = eid.decode()
                    self.positions[stream] = sid
                    out.extend((sid, res) for res in decode_any_result(fields))
        return out

    def iter(self, count: int | None = None, follow: bool = False, block_ms: int = 1000) -> Generator[Result, None, None]:
        """Yield per-window results: all present ones (then stop), or keep following new ones.

        ``count`` counts windows; windows read past ``count`` (or past where the caller stopped
        iterating) are kept for the next read.
        """
        def keep(rest: list[tuple[str, Result]]) -> None:
            self._pending = rest + self._pending

        return (res for _, res in drain(self.poll, count=count, follow=follow, block_ms=block_ms, chunk=1000,
                                        weight=lambda item: 1, keep=keep))

    def collect(self, n: int, timeout_s: float = 60.0) -> list[Result]:
        """Block until at least ``n`` per-window results have been read (or the timeout passes)."""
        import time

        deadline = time.monotonic() + timeout_s
        out: list[Result] = []
        while len(out) < n and time.monotonic() < deadline:
            out += [r for _, r in self.poll(count=max(1, n - len(out)), block_ms=200)]
        return out
