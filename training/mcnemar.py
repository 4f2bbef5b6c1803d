"""The promotion rule: McNemar's exact test on the labelled windows both models scored (stdlib only).

Over windows scored by the serving model (primary) and the candidate and labelled, only the discordant
ones count: ``b`` windows the primary got right and the candidate wrong, ``c`` the other way round.
Under "neither is better" each discordant window is a fair coin, so the one-sided p-value that the
candidate is better is ``P(X >= c)`` for ``X ~ Binomial(b + c, 1/2)`` (the exact binomial form of
McNemar's test; exact at every count, so small counts need no correction).

Looks: the evidence is tested when ``min_pairs``, ``2·min_pairs``, ``4·min_pairs``, ... labelled pairs
have arrived, up to ``max_pairs``; each look tests at ``alpha / looks`` (Bonferroni), so the chance
that a candidate no better than the primary is ever promoted stays at most ``alpha = 1 - confidence``
however many looks are taken. The first look also waits for ``min_wait_s``; at ``max_wait_s`` (or the
last look) a candidate not shown better is rejected.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def binomial_tail(k: int, n: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, 1/2)``, exact (log-space sums; 1.0 for ``k <= 0``)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def mcnemar_p(b: int, c: int) -> float:
    """One-sided exact p-value that the candidate is better (``c`` discordant wins against ``b`` losses)."""
    return binomial_tail(c, b + c)


@dataclass(frozen=True)
class Evidence:
    """The paired, labelled windows so far: counts of (primary right?, candidate right?)."""

    both: int = 0  # both right
    primary_only: int = 0  # b: primary right, candidate wrong
    candidate_only: int = 0  # c: candidate right, primary wrong
    neither: int = 0

    @property
    def pairs(self) -> int:
        """Labelled windows scored by both."""
        return self.both + self.primary_only + self.candidate_only + self.neither

    def accuracy(self) -> tuple[float | None, float | None]:
        """(primary, candidate) accuracy on the pairs."""
        n = self.pairs
        if not n:
            return None, None
        return (self.both + self.primary_only) / n, (self.both + self.candidate_only) / n


@dataclass(frozen=True)
class Rule:
    """The promotion rule's settings (from :class:`training.loop_settings.LoopSettings`)."""

    confidence: float
    min_pairs: int
    max_pairs: int
    min_wait_s: float
    max_wait_s: float

    @property
    def looks(self) -> int:
        """Planned looks: at ``min_pairs · 2^k`` up to ``max_pairs``."""
        return max(1, math.ceil(math.log2(self.max_pairs / self.min_pairs)) + 1)

    @property
    def alpha_per_look(self) -> float:
        """The significance level of each look."""
        return (1 - self.confidence) / self.looks

    def look_at(self, k: int) -> int:
        """Pairs needed for look ``k`` (0-based)."""
        return int(min(self.max_pairs, self.min_pairs * 2**k))


@dataclass(frozen=True)
class Decision:
    """One evaluation of the rule: ``outcome`` is ``wait``, ``promote`` or ``reject``, with its numbers."""

    outcome: str
    reason: str
    pairs: int
    b: int
    c: int
    p_better: float
    p_worse: float
    alpha: float
    look: int
    primary_accuracy: float | None
    candidate_accuracy: float | None
    elapsed_s: float
    looked: bool = False  # this evaluation was a look (the caller counts it)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what the events and ``status`` carry)."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def decide(ev: Evidence, rule: Rule, elapsed_s: float, looks_done: int) -> Decision:
    """Evaluate the rule on ``ev`` after ``elapsed_s`` seconds of shadow with ``looks_done`` looks taken.

    A look is due when ``ev.pairs`` reached :meth:`Rule.look_at` (``looks_done``) and ``min_wait_s``
    passed; then ``promote`` when the candidate is better at ``alpha_per_look``, ``reject`` when it is
    worse at that level or when this was the last look; at ``max_wait_s`` a final look rejects unless
    the candidate is better. Otherwise ``wait``.
    """
    b, c = ev.primary_only, ev.candidate_only
    p_better, p_worse = mcnemar_p(b, c), mcnemar_p(c, b)
    pa, ca = ev.accuracy()
    alpha = rule.alpha_per_look

    def out(outcome: str, reason: str, looked: bool = True) -> Decision:
        return Decision(outcome, reason, ev.pairs, b, c, p_better, p_worse, alpha, looks_done, pa, ca, elapsed_s, looked)

    timed_out = elapsed_s >= rule.max_wait_s
    due = ev.pairs >= rule.look_at(looks_done) and elapsed_s >= rule.min_wait_s
    if not (due or timed_out):
        need = rule.look_at(looks_done)
        return out("wait", f"{ev.pairs} of {need} labelled pairs for look {looks_done + 1}/{rule.looks}"
                   if ev.pairs < need else f"minimum wait {rule.min_wait_s:g} s", looked=False)
    if p_better < alpha and ev.pairs:
        return out("promote", f"candidate better: {c} wins vs {b} losses, p {p_better:.3g} < {alpha:.3g}")
    if p_worse < alpha and ev.pairs:
        return out("reject", f"candidate worse: {b} losses vs {c} wins, p {p_worse:.3g} < {alpha:.3g}")
    if timed_out:
        return out("reject", f"not shown better within {rule.max_wait_s:g} s (p {p_better:.3g}, {ev.pairs} pairs)")
    if looks_done + 1 >= rule.looks:
        return out("reject", f"not shown better at the last look ({ev.pairs} pairs, p {p_better:.3g} >= {alpha:.3g})")
    return out("wait", f"look {looks_done + 1}/{rule.looks}: p {p_better:.3g} >= {alpha:.3g}; next at "
               f"{rule.look_at(looks_done + 1)} pairs")
