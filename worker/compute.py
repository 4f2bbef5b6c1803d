"""Where the predict stage runs: on a compute thread of its own (overlap) or inline.

ONNX Runtime and torch release the GIL during a forward pass, so with ``overlap`` the loop thread
reads, decodes, encodes and publishes while the model computes, and the next batch grows from
what arrives meanwhile (continuous batching). At most one batch computes at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from worker.stages import Batch


class Compute:
    """Runs ``fn(batch)`` for one batch at a time; the collector asks it whether it is busy."""

    def __init__(self, fn: Callable[[Batch], Batch], overlap: bool = True) -> None:
        self.fn = fn
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="compute") if overlap else None
        self._job: Future[Batch] | None = None

    def submit(self, batch: Batch) -> None:
        """Start computing ``batch`` (inline without overlap); the previous one must be taken."""
        assert self._job is None, "take() the previous batch first"
        if self._pool is not None:
            self._job = self._pool.submit(self.fn, batch)
            return
        job: Future[Batch] = Future()
        try:
            job.set_result(self.fn(batch))
        except BaseException as e:  # re-raised by take(), as the thread pool would
            job.set_exception(e)
        self._job = job

    @property
    def inflight(self) -> bool:
        """Whether a batch was submitted and not taken yet."""
        return self._job is not None

    def busy(self) -> bool:
        """Whether a batch is still computing."""
        return self._job is not None and not self._job.done()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the computing batch; True when none computes."""
        job = self._job
        if job is None or job.done():
            return True
        wait([job], timeout=timeout_s)
        return job.done()

    def take(self) -> Batch | None:
        """The computed batch (waiting for it), or None when none was submitted."""
        job, self._job = self._job, None
        return None if job is None else job.result()

    def close(self) -> None:
        """Wait for the computing batch and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
