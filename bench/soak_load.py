"""The soak's load and its oracle: a paced producer process, a results reader that counts every
result by client id, and resident-memory readings from ``/proc``.

The producer publishes single-window entries with client ids ``s-<n>`` (n = 0, 1, ...) at a fixed
rate; it reports how many it has published (accepted by Redis) through a shared counter. The reader
follows the results stream from its beginning with ``XREAD`` and counts results per id in a byte
array, so ten minutes at thousands of windows/s cost a few MB; it must keep up, because the workers
cap the results stream (``results_maxlen``): :meth:`Oracle.complete` compares what it read with the
stream's ``entries-added``.
"""

from __future__ import annotations

import time
from collections import Counter
from multiprocessing.sharedctypes import Synchronized

import numpy as np
import redis

from bench.harness import memory_kib
from bench.model import windows
from producer.client import Producer
from protocol.keys import Keys

#: Client id prefixes: the soak's windows and the calibration's.
SOAK, CALIB = b"s-", b"c-"
#: Windows a producer round trip carries at most.
CHUNK = 500


def produce(url: str, prefix: str, rate: float, seconds: float, sent: Synchronized[int]) -> None:
    """Publish ``rate * seconds`` windows at ``rate`` windows/s (open loop; what falls due while a round
    trip runs goes out in the next one); ``sent`` holds the number Redis has accepted so far."""
    producer = Producer(redis.Redis.from_url(url), Keys(prefix, prefix), pipeline_size=CHUNK)
    pool = windows(256, seed=11)
    total = int(rate * seconds)
    t0 = time.perf_counter()
    n = 0
    while n < total:
        elapsed = time.perf_counter() - t0
        due = min(total, int(elapsed * rate) + 1)
        if due <= n:
            time.sleep(min(0.005, max(0.0005, (n + 1) / rate - elapsed)))
            continue
        k = min(due - n, CHUNK)
        producer.publish_many([pool[i % len(pool)] for i in range(n, n + k)], ids=[f"s-{i}" for i in range(n, n + k)])
        n += k
        sent.value = n


class Oracle:
    """Every entry of the results stream, read as it arrives and counted by client id."""

    def __init__(self, r: redis.Redis, stream: str, expect: int) -> None:
        self.r = r
        self.stream = stream
        self.pos = "0-0"
        self.counts = np.zeros(max(1024, expect), np.uint8)  # results per soak id s-<n> (saturating at 255)
        self.read = 0  # result entries read, all of them
        self.highest = -1  # highest soak id seen
        self.calib_ts: list[int] = []  # publish times (µs) of the calibration's results
        self.not_ok = 0  # results whose status is not ok
        self.models: Counter[str] = Counter()  # model versions of the results since the last take_models()

    def poll(self, block_ms: int | None = 50) -> int:
        """Read what is new (up to 10 000 entries); returns the number read."""
        resp = self.r.xread({self.stream: self.pos}, count=10_000, block=block_ms)
        n = 0
        for _, entries in resp or []:
            for eid, f in entries:
                n += 1
                self.pos = eid.decode()
                cid = f.get(b"cid", b"")
                if cid.startswith(SOAK):
                    self._count(int(cid[len(SOAK):]))
                elif cid.startswith(CALIB):
                    self.calib_ts.append(int(f[b"ts"]))
                if f.get(b"status", b"ok") != b"ok":
                    self.not_ok += 1
                self.models[f.get(b"model", b"?").decode()] += 1
        self.read += n
        return n

    def _count(self, i: int) -> None:
        if i >= len(self.counts):
            grown = np.zeros(max(2 * len(self.counts), i + 1), np.uint8)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        if self.counts[i] < 255:
            self.counts[i] += 1
        self.highest = max(self.highest, i)

    def drain(self) -> None:
        """Read until nothing new is there."""
        while self.poll(block_ms=None):
            pass

    def take_models(self) -> dict[str, int]:
        """Results per model version since the previous call."""
        out, self.models = dict(self.models), Counter()
        return out

    def served(self, published: int) -> int:
        """Soak ids below ``published`` with at least one result."""
        return int(np.count_nonzero(self.counts[:published]))

    def audit(self, published: int) -> dict[str, int]:
        """Lost (published, no result), duplicates (surplus results over all ids) and strays (results
        for ids never published)."""
        c = self.counts[: max(published, self.highest + 1)].astype(np.int64)
        return {"published": published, "with_result": self.served(published),
                "lost": published - self.served(published),
                "duplicates": int(np.clip(c - 1, 0, None).sum()),
                "strays": int(np.count_nonzero(c[published:])), "not_ok": self.not_ok}

    def complete(self) -> dict[str, int | bool]:
        """Whether the reader saw every entry ever added to the results stream (none trimmed unread)."""
        added = int(self.r.xinfo_stream(self.stream)["entries-added"])
        return {"entries_added": added, "entries_read": self.read, "complete": added == self.read}


def rss_kb(pid: int) -> int | None:
    """Resident memory (VmRSS) of ``pid`` in KiB; None when it is gone."""
    return memory_kib(pid).get("VmRSS")
