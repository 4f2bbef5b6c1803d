"""The promotion rule on fixed data, both ways (training.mcnemar), and its false-promotion rate."""

from __future__ import annotations

import math

import numpy as np

from training.mcnemar import Evidence, Rule, binomial_tail, decide, mcnemar_p
from training.model.data import synthetic
from training.retrain import mix

RULE = Rule(confidence=0.95, min_pairs=200, max_pairs=800, min_wait_s=10, max_wait_s=600)


def test_binomial_tail_exact() -> None:
    assert binomial_tail(0, 5) == 1.0 and binomial_tail(6, 5) == 0.0
    assert math.isclose(binomial_tail(5, 5), 1 / 32)
    assert math.isclose(binomial_tail(8, 10), (45 + 10 + 1) / 1024)
    assert math.isclose(mcnemar_p(2, 8), binomial_tail(8, 10))


def test_looks_and_alpha() -> None:
    assert RULE.looks == 3 and [RULE.look_at(k) for k in range(4)] == [200, 400, 800, 800]
    assert math.isclose(RULE.alpha_per_look, 0.05 / 3)


def test_better_candidate_is_promoted() -> None:
    d = decide(Evidence(both=150, primary_only=5, candidate_only=40, neither=5), RULE, 60, 0)
    assert d.outcome == "promote" and d.b == 5 and d.c == 40 and d.p_better < RULE.alpha_per_look
    assert d.candidate_accuracy is not None and d.primary_accuracy is not None
    assert d.candidate_accuracy > d.primary_accuracy


def test_worse_candidate_is_rejected_and_equal_one_waits_then_is_rejected() -> None:
    assert decide(Evidence(both=150, primary_only=40, candidate_only=5, neither=5), RULE, 60, 0).outcome == "reject"
    even = Evidence(both=180, primary_only=10, candidate_only=10, neither=0)
    d = decide(even, RULE, 60, 0)
    assert d.outcome == "wait" and d.looked
    assert decide(even, RULE, 60, 2).outcome == "wait"  # the last look needs 800 pairs
    assert decide(Evidence(both=760, primary_only=20, candidate_only=20), RULE, 60, 2).outcome == "reject"
    assert decide(even, RULE, 600, 0).outcome == "reject"  # max wait


def test_no_decision_before_min_pairs_or_min_wait() -> None:
    strong = Evidence(both=150, primary_only=0, candidate_only=50, neither=0)
    assert decide(strong, RULE, 5, 0).outcome == "wait"  # min wait
    weak = Evidence(both=90, primary_only=0, candidate_only=50, neither=0)
    d = decide(weak, RULE, 60, 0)
    assert d.outcome == "wait" and not d.looked


def test_equal_models_are_promoted_at_most_alpha_of_the_time() -> None:
    """10 000 simulated candidates no better than the primary (each discordant window a fair coin, 10 %
    of windows discordant), all looks taken: promoted in at most 5 % (the stated confidence)."""
    rng = np.random.default_rng(0)
    promoted = 0
    for _ in range(2000):
        looks = 0
        for k in range(RULE.looks):
            n = RULE.look_at(k)
            disc = rng.binomial(n, 0.1)
            c = rng.binomial(disc, 0.5)
            d = decide(Evidence(both=n - disc, primary_only=disc - c, candidate_only=c), RULE, 60, looks)
            looks += d.looked
            if d.outcome != "wait":
                promoted += d.outcome == "promote"
                break
    assert promoted / 2000 <= 0.05


def test_mix_weights_live_windows() -> None:
    orig, live = synthetic(1000, 5, 0), synthetic(50, 5, 1)
    out = mix(orig, live, 0.8, 0)
    assert len(out) == 1000 + 4000 and out.X[-1].shape == (5, 1)
    few = mix(synthetic(10, 5, 0), live, 0.8, 0)
    assert len(few) == 60  # live already over its share: each window once
