"""The verdict rules of ``bigru-worker compare`` on constructed result pairs (no Redis needed)."""

from __future__ import annotations

from protocol.results import Result
from worker.compare import Rules, summarize, true_label


def _res(label: int, *, truth: object = None, infer_us: int = 1000, model: str = "p") -> Result:
    meta = {} if truth is None else {"label": truth}
    return Result("1-0", "", "ok", label, "ab"[label], [0.5, 0.5], model, "w", 0, 0, infer_us, 5000, 0, 1, meta)


def _pairs(n: int, agree: float, truth: bool, cand_infer_us: int = 1000) -> list[tuple[Result, Result]]:
    out = []
    for i in range(n):
        p = i % 2
        c = p if i < agree * n else 1 - p
        t = p if truth else None
        out.append((_res(p, truth=t), _res(c, truth=t, infer_us=cand_infer_us, model="c")))
    return out


def test_too_few_pairs_is_insufficient() -> None:
    assert summarize(_pairs(50, 1.0, truth=True), 0)["verdict"] == "insufficient"


def test_labelled_verdicts_follow_the_accuracy_difference() -> None:
    assert summarize(_pairs(400, 1.0, truth=True), 0)["verdict"] == "equivalent"
    worse = summarize(_pairs(400, 0.9, truth=True), 0)
    assert worse["verdict"] == "worse" and worse["accuracy"] == {"primary": 1.0, "candidate": 0.9}
    assert not worse["promotable"]


def test_without_labels_agreement_decides() -> None:
    assert summarize(_pairs(400, 1.0, truth=False), 0)["verdict"] == "equivalent"
    doc = summarize(_pairs(400, 0.9, truth=False), 0)
    assert doc["verdict"] == "differs" and doc["labelled"] == 0 and doc["agreement"] == 0.9
    assert set(doc["per_class"]) == {"a", "b"}


def test_a_slower_candidate_is_not_promotable() -> None:
    doc = summarize(_pairs(400, 1.0, truth=True, cand_infer_us=5000), 0, Rules())
    assert doc["verdict"] == "equivalent" and not doc["promotable"]
    assert any(r.startswith("slower") for r in doc["reasons"])


def test_label_is_a_class_name_or_index_only() -> None:
    assert true_label(_res(0, truth="a")) == "a" and true_label(_res(0, truth=1)) == 1
    assert true_label(_res(0, truth=True)) is None and true_label(_res(0, truth=0.5)) is None
    assert true_label(_res(0)) is None
