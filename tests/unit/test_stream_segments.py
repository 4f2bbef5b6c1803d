"""The segmenter: sequence order whatever the arrival order, smoothing with hysteresis, boundaries,
breaks, and a state that survives a restart."""

from __future__ import annotations

import json

import numpy as np

from producer.segments import Segment, Segmenter, Vote, vote_of
from protocol.results import Result
from protocol.span import Span

HOP_US = 1_000_000  # windows of 4 s every 1 s
NAMES = ("walk", "run")


def _votes(labels: list[int], key: str = "dev", first_seq: int = 0, p: float = 0.9) -> list[Vote]:
    out = []
    for i, lab in enumerate(labels):
        seq = first_seq + i
        probs = [1 - p, p] if lab else [p, 1 - p]
        out.append(Vote(key, seq, seq * HOP_US, seq * HOP_US + 3 * HOP_US, tuple(probs), NAMES))
    return out


def _run(seg: Segmenter, votes: list[Vote]) -> list[Segment]:
    out = []
    for v in votes:
        out += seg.add(v)
    return out + seg.flush()


def test_segments_from_ordered_windows_with_boundary_between_the_labels() -> None:
    segs = _run(Segmenter(smooth=1, hold=1, reorder=0), _votes([0] * 10 + [1] * 10))
    assert [(s.label, s.windows) for s in segs] == [("walk", 10), ("run", 10)]
    assert segs[0].start_us == 0 and segs[1].end_us == 19 * HOP_US + 3 * HOP_US
    # window 9's centre is 10.5 s, window 10's 11.5 s: the boundary half-way
    assert segs[0].end_us == segs[1].start_us == 11 * HOP_US
    assert 0.89 < segs[0].confidence < 0.91


def test_out_of_order_arrivals_give_the_same_segments() -> None:
    votes = _votes([0] * 12 + [1] * 12 + [0] * 12, "a") + _votes([1] * 20, "b", first_seq=100)
    want = _run(Segmenter(), votes)
    rng = np.random.default_rng(4)
    shuffled = list(votes)
    for i in range(0, len(shuffled) - 4, 4):  # replicas reorder results a few windows apart
        block = shuffled[i: i + 4]
        rng.shuffle(block)
        shuffled[i: i + 4] = block
    seg = Segmenter()
    got = _run(seg, shuffled)
    assert sorted(got, key=lambda s: (s.key, s.start_us)) == sorted(want, key=lambda s: (s.key, s.start_us))
    assert seg.counts.late == 0 and seg.counts.skipped == 0
    assert [s.label for s in want if s.key == "a"] == ["walk", "run", "walk"]


def test_one_odd_window_does_not_flip_the_label() -> None:
    labels = [0] * 8 + [1] + [0] * 8
    assert [s.label for s in _run(Segmenter(smooth=1, hold=2, reorder=0), _votes(labels))] == ["walk"]
    assert [s.label for s in _run(Segmenter(smooth=1, hold=1, reorder=0), _votes(labels))] == ["walk", "run", "walk"]
    strong = _votes(labels, p=0.99)  # smoothing alone (k = 3) also absorbs it when the majority is confident
    assert [s.label for s in _run(Segmenter(smooth=3, hold=1, reorder=0), strong)] == ["walk"]


def test_late_window_is_dropped_and_missing_windows_are_skipped_or_break_the_segment() -> None:
    votes = _votes([0] * 30)
    seg = Segmenter(reorder=2, max_missing=3)
    kept = [v for v in votes if v.seq not in (5, 6, 15, 16, 17, 18, 19)]  # 2 missing, then 5 missing (a break)
    out = []
    for v in kept:
        out += seg.add(v)
    out += seg.add(votes[5])  # arrives after its turn
    out += seg.flush()
    assert seg.counts.late == 1 and seg.counts.skipped == 7
    assert [(s.start_us, s.end_us) for s in out] == [(0, 14 * HOP_US + 3 * HOP_US), (20 * HOP_US, 29 * HOP_US + 3 * HOP_US)]


def test_state_survives_a_restart_mid_stream() -> None:
    votes = _votes([0] * 10 + [1] * 10 + [0] * 10)
    want = _run(Segmenter(), votes)
    first = Segmenter()
    got = []
    for v in votes[:17]:
        got += first.add(v)
    again = Segmenter.from_state(json.loads(json.dumps(first.state())))
    got += _run(again, votes[17:])
    assert got == want


def test_results_without_span_or_probabilities_are_ignored() -> None:
    base = dict(input_id="1-0", cid="c", status="ok", label=1, class_name="run", probs=[0.2, 0.8], model="m",
                worker="w", queue_us=0, wait_us=0, infer_us=0, e2e_us=0, ts_us=0, batch=1)
    assert vote_of(Result(**base)) is None  # type: ignore[arg-type]
    assert vote_of(Result(**{**base, "status": "expired", "probs": []}, span=Span("d", 0, 0, 1))) is None  # type: ignore[arg-type]
    v = vote_of(Result(**base, span=Span("d", 4, 10, 20)))  # type: ignore[arg-type]
    assert v is not None and (v.key, v.seq, v.names) == ("d", 4, ("", "run"))


def test_boundary_is_where_the_interpolated_lead_crosses_zero() -> None:
    votes = _votes([0] * 10 + [1] * 10)
    votes[9] = Vote("dev", 9, 9 * HOP_US, 12 * HOP_US, (0.7, 0.3), NAMES)  # the old label leads by 0.4 ...
    votes[10] = Vote("dev", 10, 10 * HOP_US, 13 * HOP_US, (0.2, 0.8), NAMES)  # ... the new one by 0.6 a window later
    segs = _run(Segmenter(smooth=1, hold=1, reorder=0), votes)
    assert segs[0].end_us == segs[1].start_us == 10_900_000  # centres 10.5 s and 11.5 s: 0.4 of the way
