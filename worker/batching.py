"""How long a replica keeps filling a micro-batch once the model is idle.

While the model computes a batch, the collector reads everything that arrives (up to
``max_batch``): that costs no latency. Once the model is idle and entries are in hand, the policy
decides whether to wait for more: ``continuous`` (the default) never waits, ``fixed`` waits up to
``max_wait_ms`` after the first read, ``slo`` waits while the oldest window would still finish
within the latency target. After publishing, the loop reports each batch's service time so the
SLO policy can learn its cost curve.
"""

from __future__ import annotations

import time
from typing import Protocol

from worker.config import Batching
from worker.types import Batch


class BatchWait(Protocol):
    """A batch-fill policy."""

    def fill_deadline(self, start: float, oldest_age_s: float, n: int) -> float:
        """Monotonic time until which to wait for more windows, given ``n`` in hand.

        ``start`` is when the first entries were read (monotonic), ``oldest_age_s`` the age of
        the oldest entry in hand at that moment.
        """
        ...

    def observe(self, n: int, service_s: float) -> None:
        """Record that a batch of ``n`` entries took ``service_s`` from read to published."""
        ...


class NoWait:
    """Continuous batching: hand the batch to the idle model at once (it grew while the model was busy)."""

    def fill_deadline(self, start: float, oldest_age_s: float, n: int) -> float:
        """``start``: no waiting."""
        return start

    def observe(self, n: int, service_s: float) -> None:
        """Nothing to learn."""


class FixedWait:
    """Wait at most ``max_wait_s`` after the first read (the classic micro-batching rule)."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s

    def fill_deadline(self, start: float, oldest_age_s: float, n: int) -> float:
        """``start + max_wait_s`` regardless of the batch."""
        return start + self.max_wait_s

    def observe(self, n: int, service_s: float) -> None:
        """Nothing to learn."""


class CostModel:
    """Online fit of ``service_s ~ a + b * n`` with exponential forgetting."""

    def __init__(self, decay: float = 0.97) -> None:
        self.decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def add(self, n: int, t: float) -> None:
        """Add one observation (older ones fade by ``decay`` per call)."""
        d = self.decay
        self._w = self._w * d + 1.0
        self._n = self._n * d + n
        self._t = self._t * d + t
        self._nn = self._nn * d + n * n
        self._nt = self._nt * d + n * t

    @property
    def ready(self) -> bool:
        """Whether there are enough observations to predict."""
        return self._w >= 3.0

    def predict(self, n: int) -> float:
        """Expected service time of a batch of ``n`` (0 before any observation)."""
        if self._w <= 0.0 or self._n <= 0.0:
            return 0.0
        mn, mt = self._n / self._w, self._t / self._w
        var = self._nn / self._w - mn * mn
        if var < 0.25:  # every batch had (about) the same size: assume cost proportional to n
            return mt / mn * n
        b = max(0.0, (self._nt / self._w - mn * mt) / var)
        a = max(0.0, mt - b * mn)
        return a + b * n


class SloWait:
    """Wait for more windows only while the oldest one would still finish within the target.

    With ``n`` windows in hand the batch may stay open until the oldest window's age plus the
    expected service time of ``n + 1`` windows reaches ``headroom * target_s``; the remaining
    fraction of the target absorbs scheduling jitter and the next batch's queueing. Until the cost
    curve has a few observations it does not wait at all.
    """

    def __init__(self, target_s: float, headroom: float = 0.6, cost: CostModel | None = None) -> None:
        self.target_s = target_s
        self.headroom = headroom
        self.cost = cost or CostModel()

    def fill_deadline(self, start: float, oldest_age_s: float, n: int) -> float:
        """The latest moment a batch of ``n + 1`` still completes inside the budget."""
        if not self.cost.ready:
            return start
        return start - oldest_age_s + self.headroom * self.target_s - self.cost.predict(n + 1)

    def observe(self, n: int, service_s: float) -> None:
        """Feed the cost curve."""
        if n > 0:
            self.cost.add(n, service_s)


def make_batch_wait(settings: Batching) -> BatchWait:
    """The policy named by ``settings.batch_wait``."""
    if settings.batch_wait == "slo":
        return SloWait(settings.slo_p99_ms / 1000)
    if settings.batch_wait == "fixed":
        return FixedWait(settings.max_wait_ms / 1000)
    return NoWait()


class ServiceTimes:
    """Feeds the policy each published batch's service time (a listener of ``worker.events.Listeners``):
    its entries, and the time from its hand-over to the model to now."""

    def __init__(self, policy: BatchWait) -> None:
        self.policy = policy

    def on_published(self, batch: Batch) -> None:
        """Report ``batch``'s size and service time to the policy."""
        now = time.perf_counter()
        self.policy.observe(len(batch.entries), now - (batch.t_submit or now))
