"""The predict stage's circuit breaker: telling a poison window from a broken model.

The predict stage isolates failing windows by bisection (``worker.stages``); a lone failing window
among good ones is a poison window and is dead-lettered. When the model itself is broken (a device
error, a session corrupted by a reload, a bug) every window fails, and dead-lettering them would
drain the stream into the dead-letter stream. :func:`suspect` and :func:`verdict` tell the two apart:
a batch is *suspect* when at least ``failure_ratio`` of its windows failed on their own, and a
suspect batch is *broken* when a probe (the checkpoint's golden batch, else windows this replica
served recently) fails too — or, with nothing to probe, when two or more windows failed.

:class:`Breaker` is the state, driven by the loop (``worker.guard``) and clock-injectable::

    closed --trip--> open --probe ok--> probing --batch served--> closed
                      ^  <--probe fails--'   |
                      '------batch broken----'

While ``open`` the replica takes no work (its inputs stay pending, unacknowledged) and probes with
exponential backoff and jitter; ``probing`` is half-open: work is read again and the first batch
decides whether to close or to open again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.config import default

CLOSED, OPEN, PROBING = "closed", "open", "probing"
#: The states in gauge order (``bigru_breaker_state``: 0 closed, 1 open, 2 probing).
STATES = (CLOSED, OPEN, PROBING)


@dataclass(frozen=True)
class BreakerRules:
    """Thresholds of the breaker (from ``WorkerSettings.breaker_*``)."""

    enabled: bool = default("breaker")
    failure_ratio: float = default("breaker_failure_ratio")  # a batch is suspect when this share of its windows failed
    backoff_s: float = default("breaker_backoff_ms") / 1000  # first probe this long after a trip (then doubling, jitter)
    backoff_max_s: float = default("breaker_backoff_max_ms") / 1000
    reload_batches: int = default("breaker_reload_batches")  # a failure this many batches after a swap falls back
    probe_windows: int = 8  # windows per probe


def suspect(windows: int, failed: int, rules: BreakerRules) -> bool:
    """Whether ``failed`` of ``windows`` windows failing alone may mean a broken model."""
    return rules.enabled and windows > 0 and failed > 0 and failed >= rules.failure_ratio * windows


def verdict(windows: int, failed: int, probe_ok: bool | None, rules: BreakerRules) -> bool:
    """True when the model is broken, not the windows.

    ``probe_ok`` is whether a probe with known-good windows passed (None: nothing to probe with).
    Without a probe, a batch of two or more windows that is suspect counts as broken; a lone
    failing window stays a poison window.
    """
    if not suspect(windows, failed, rules):
        return False
    if probe_ok is None:
        return windows >= 2
    return not probe_ok


class Breaker:
    """The breaker's state and backoff (see the module docstring); not thread-safe: one loop drives it."""

    def __init__(self, rules: BreakerRules, monotonic: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.rules = rules
        self.monotonic = monotonic
        self.rand = rand
        self.state = CLOSED
        self.trips = 0  # closed -> open transitions
        self.failures = 0  # failed probes (or broken half-open batches) since the last trip
        self.reason = ""
        self.opened_at: float | None = None
        self.next_probe = 0.0

    @property
    def holding(self) -> bool:
        """Whether the replica must take no work (open)."""
        return self.state == OPEN

    def trip(self, reason: str) -> bool:
        """The model is broken: open (a new trip when closed, a failed retry when probing); True on a new trip."""
        new = self.state == CLOSED
        if new:
            self.trips += 1
            self.failures = 0
            self.opened_at = self.monotonic()
        else:
            self.failures += 1
        self.state, self.reason = OPEN, reason
        self._schedule()
        return new

    def delay_s(self) -> float:
        """The backoff before the next probe: doubling per failure up to the cap, times 0.5..1.5 jitter."""
        base = min(self.rules.backoff_max_s, self.rules.backoff_s * float(2 ** min(self.failures, 30)))
        return base * (0.5 + self.rand())

    def _schedule(self) -> None:
        self.next_probe = self.monotonic() + self.delay_s()

    def probe_now(self) -> None:
        """Probe at once (after falling back to another model version)."""
        self.next_probe = self.monotonic()

    def probe_due(self) -> bool:
        """Whether an open breaker's backoff is over."""
        return self.state == OPEN and self.monotonic() >= self.next_probe

    def wait_s(self) -> float:
        """Seconds until the next probe (0 when due or not open)."""
        return max(0.0, self.next_probe - self.monotonic()) if self.state == OPEN else 0.0

    def probed(self, ok: bool) -> None:
        """A probe ran: half-open when it passed, open again (longer backoff) when it failed."""
        if ok:
            self.state = PROBING
            return
        self.failures += 1
        self._schedule()

    def served(self) -> bool:
        """A batch was served without a broken verdict; True when that closed a half-open breaker."""
        if self.state != PROBING:
            return False
        self.state, self.reason, self.opened_at = CLOSED, "", None
        return True
