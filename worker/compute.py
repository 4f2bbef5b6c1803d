"""Where the predict stage runs: on a compute thread of its own (overlap) or inline.

ONNX Runtime and torch release the GIL during a forward pass, so with ``overlap`` the loop thread
reads, decodes, encodes and publishes while the model computes, and the next batch grows from
what arrives meanwhile (continuous batching). One batch computes at a time; the loop keeps at most
one more queued behind it, so the model goes from one batch to the next without a thread handoff.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from worker.types import Batch


class Compute:
    """Runs ``fn(batch)`` one batch at a time, in submission order; finished batches are taken in order.

    With ``overlap`` a batch submitted while another computes waits in the executor's queue and
    starts the moment the previous one ends, without waiting for the loop thread.
    """

    def __init__(self, fn: Callable[[Batch], Batch], overlap: bool = True) -> None:
        self.fn = fn
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="compute") if overlap else None
        self._jobs: deque[Future[Batch]] = deque()

    def submit(self, batch: Batch) -> None:
        """Queue ``batch`` behind the ones in flight (compute it at once without overlap)."""
        if self._pool is not None:
            self._jobs.append(self._pool.submit(self.fn, batch))
            return
        job: Future[Batch] = Future()
        try:
            job.set_result(self.fn(batch))
        except BaseException as e:  # re-raised by take(), as the thread pool would
            job.set_exception(e)
        self._jobs.append(job)

    @property
    def inflight(self) -> int:
        """Batches submitted and not taken yet."""
        return len(self._jobs)

    def busy(self) -> bool:
        """Whether a batch is computing or waiting to."""
        return bool(self._jobs) and not self._jobs[-1].done()

    def ready(self) -> bool:
        """Whether the oldest batch in flight is computed."""
        return bool(self._jobs) and self._jobs[0].done()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until every submitted batch is computed; True when they are."""
        if not self.busy():
            return True
        wait([self._jobs[-1]], timeout=timeout_s)
        return not self.busy()

    def take(self) -> Batch:
        """The oldest batch in flight, computed (waiting for it); raises what its computation raised."""
        return self._jobs.popleft().result()

    def close(self) -> None:
        """Wait for the computing batches and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
