"""The read-poll-yield loop of both results readers (``producer.results.ResultsReader`` and
``producer.group_reader.GroupReader``), written once: :func:`drain`."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["drain"]


def drain(poll: Callable[..., list[T]], *, count: int | None, follow: bool, block_ms: int, chunk: int,
          weight: Callable[[T], int], keep: Callable[[list[T]], None],
          finished: Callable[[T], None] | None = None, before_poll: Callable[[], None] | None = None,
          ) -> Generator[T, None, None]:
    """Yield the items ``poll(count=n, block_ms=b)`` reads, ``chunk`` at a time: those present (then stop), or keep
    following new ones (``follow``, blocking ``block_ms`` a read) until ``count`` (summed ``weight``) is reached.

    Without ``finished`` an item is taken when it is handed out; with it, only once the caller asks for the
    next one (``finished(item)`` is called then), so the item in hand when the caller stops is not taken.
    ``before_poll`` runs before each read; ``keep`` gets the items read and not taken when the loop ends.
    """
    seen = 0
    batch: list[T] = []
    j = 0  # items of batch taken
    try:
        while count is None or seen < count:
            if before_poll is not None:
                before_poll()
            batch = poll(count=chunk if count is None else min(chunk, count - seen), block_ms=block_ms if follow else None)
            j = 0
            if not batch:
                if not follow:
                    return
                continue
            for item in batch:
                if finished is None:
                    j += 1
                yield item
                if finished is not None:
                    finished(item)
                    j += 1
                seen += weight(item)
                if count is not None and seen >= count:
                    return
    finally:  # stopped at count, or the caller stopped early
        keep(batch[j:])
