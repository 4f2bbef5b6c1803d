"""Reading the results stream(s) from Python (what ``bigru-producer results`` uses)."""

from __future__ import annotations

from collections.abc import Iterator

import redis

from worker.keys import Keys
from worker.wire import Result, decode_result


class ResultsReader:
    """Iterates results in stream order per shard, merging shards; keeps its position."""

    def __init__(self, r: redis.Redis, keys: Keys, start: str = "0-0") -> None:
        self.r = r
        self.keys = keys
        self.positions = {sk.results: start for sk in keys.all_shards()}

    def poll(self, count: int = 1000, block_ms: int | None = None) -> list[tuple[str, Result]]:
        """Read up to ``count`` new results per shard (blocking up to ``block_ms`` when given)."""
        out: list[tuple[str, Result]] = []
        for stream, pos in self.positions.items():
            resp = self.r.xread({stream: pos}, count=count, block=block_ms)
            for _, entries in resp or []:
                for eid, fields in entries:
                    sid = eid.decode()
                    self.positions[stream] = sid
                    out.append((sid, decode_result(fields)))
        return out

    def iter(self, count: int | None = None, follow: bool = False, block_ms: int = 1000) -> Iterator[Result]:
        """Yield results: all present ones (then stop), or keep following new ones."""
        seen = 0
        while count is None or seen < count:
            batch = self.poll(count=1000 if count is None else min(1000, count - seen), block_ms=block_ms if follow else None)
            if not batch:
                if not follow:
                    return
                continue
            for _, res in batch:
                yield res
                seen += 1
                if count is not None and seen >= count:
                    return

    def collect(self, n: int, timeout_s: float = 60.0) -> list[Result]:
        """Block until ``n`` results have been read (or the timeout passes)."""
        import time

        deadline = time.monotonic() + timeout_s
        out: list[Result] = []
        while len(out) < n and time.monotonic() < deadline:
            out += [r for _, r in self.poll(count=max(1, n - len(out)), block_ms=200)]
        return out
