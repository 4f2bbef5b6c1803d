"""``bigru-worker compare``: the shadow candidate against the primary model on the same live windows.

Both results streams are read (the primary's ``{<tag>}:results`` and the shadow pool's
``{<tag>}:shadow:results``) and joined per window on (shard, input entry id, window index). Over
the pairs it reports agreement (overall and per class of the primary's prediction), accuracy of
both where the input's ``meta`` carries a ``label`` (the true class name, or its index), latency
of both (``infer_us`` and ``e2e_us`` percentiles) and a verdict (:func:`verdict`).

The selection is either the last ``windows`` shadow results, or the results whose **input** entry id
lies in ``[since, until]`` (unix ms); primary results are read over the same span widened by
``slack_ms``, since either pool may publish a window later than the other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from protocol.keys import Keys
from protocol.replies import as_str
from protocol.results import Result, decode_any_result
from protocol.wire import WireError

#: Window identity across the two streams: (shard, input entry id, window index).
Key = tuple[int, str, int]


@dataclass(frozen=True)
class Rules:
    """When the verdict may say ``better``/``equivalent``.

    ``max_drop``: accuracy difference (candidate minus primary) beyond which it is ``worse`` or
    ``better``; ``min_agreement``: without labels, agreement at least this is ``equivalent``, else
    ``differs``; ``latency_ratio``: a candidate whose ``infer_us`` p99 exceeds the primary's by more
    than this factor is ``slower`` (not promotable without ``--force``).
    """

    min_pairs: int = 100
    min_labelled: int = 100
    max_drop: float = 0.02
    min_agreement: float = 0.99
    latency_ratio: float = 1.5


def _id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _windows(rows: Iterable[tuple[bytes, dict[bytes, bytes]]], shard: int) -> dict[Key, Result]:
    out: dict[Key, Result] = {}
    for _, fields in rows:
        try:
            results = decode_any_result(fields)
        except (WireError, ValueError, KeyError):
            continue
        for i, res in enumerate(results):
            out[(shard, res.input_id, i)] = res
    return out


def read_pairs(r: redis.Redis, keys: Keys, *, windows: int | None = None, since_ms: int | None = None,
               until_ms: int | None = None, slack_ms: int = 60_000) -> tuple[list[tuple[Result, Result]], int]:
    """The (primary, candidate) result pairs of the selection, and how many shadow windows had no
    primary result (yet)."""
    primary, shadow = keys.as_primary(), keys.as_shadow()
    pairs: list[tuple[Result, Result]] = []
    unmatched = 0
    for s in range(keys.shards):
        sk_p, sk_s = primary.shard(s), shadow.shard(s)
        if windows is not None:
            rows = r.xrevrange(sk_s.results, count=windows)
        else:
            lo = "-" if since_ms is None else str(since_ms)
            hi = "+" if until_ms is None else str(until_ms + slack_ms)
            rows = r.xrange(sk_s.results, min=lo, max=hi)
        cand = _windows(rows, s)
        if windows is None:
            cand = {k: v for k, v in cand.items() if (since_ms is None or _id_ms(k[1]) >= since_ms)
                    and (until_ms is None or _id_ms(k[1]) <= until_ms)}
        if not cand:
            continue
        first = min(_id_ms(as_str(i)) for i, _ in rows)
        prim = _windows(r.xrange(sk_p.results, min=str(max(0, first - slack_ms))), s)
        for k, c in cand.items():
            p = prim.get(k)
            if p is None:
                unmatched += 1
            else:
                pairs.append((p, c))
    if windows is not None and len(pairs) > windows:
        pairs = sorted(pairs, key=lambda pc: pc[1].ts_us)[-windows:]
    return pairs, unmatched


def true_label(res: Result) -> str | int | None:
    """The ``label`` an input carried in its ``meta`` (class name or index), or None."""
    v = res.meta.get("label") if res.meta else None
    return v if isinstance(v, (str, int)) and not isinstance(v, bool) else None


def _correct(res: Result, label: str | int) -> bool:
    return res.class_name == label if isinstance(label, str) else res.label == label


def _pct(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(np.asarray(values) / 1000, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def summarize(pairs: list[tuple[Result, Result]], unmatched: int, rules: Rules | None = None) -> dict[str, Any]:
    """The comparison document (what ``compare --json`` prints)."""
    rules = rules or Rules()
    ok = [(p, c) for p, c in pairs if p.status == "ok" and c.status == "ok"]
    per_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p, c in ok:
        row = per_class[p.class_name]
        row[0] += 1
        row[1] += p.label == c.label
    agree = sum(row[1] for row in per_class.values())
    labelled = [(p, c, lab) for p, c in ok if (lab := true_label(p)) is not None]
    doc: dict[str, Any] = {
        "pairs": len(ok), "unmatched": unmatched,
        "primary_models": sorted({p.model for p, _ in ok}), "candidate_models": sorted({c.model for _, c in ok}),
        "agreement": round(agree / len(ok), 4) if ok else None,
        "per_class": {k: {"windows": n, "agreement": round(a / n, 4)} for k, (n, a) in sorted(per_class.items())},
        "labelled": len(labelled),
        "accuracy": {
            "primary": round(sum(_correct(p, lab) for p, _, lab in labelled) / len(labelled), 4) if labelled else None,
            "candidate": round(sum(_correct(c, lab) for _, c, lab in labelled) / len(labelled), 4) if labelled else None,
        },
        "latency": {
            "primary": {"infer": _pct([p.infer_us for p, _ in ok]), "e2e": _pct([p.e2e_us for p, _ in ok])},
            "candidate": {"infer": _pct([c.infer_us for _, c in ok]), "e2e": _pct([c.e2e_us for _, c in ok])},
        },
    }
    doc["verdict"], doc["reasons"] = verdict(doc, rules)
    doc["promotable"] = doc["verdict"] in ("better", "equivalent") and "slower" not in " ".join(doc["reasons"])
    return doc


def verdict(doc: dict[str, Any], rules: Rules) -> tuple[str, list[str]]:
    """``insufficient`` (fewer than ``min_pairs`` pairs); with at least ``min_labelled`` labelled windows
    ``worse`` / ``equivalent`` / ``better`` by the accuracy difference against ``max_drop``; without,
    ``equivalent`` (agreement >= ``min_agreement``) or ``differs``. A reason names a slower candidate."""
    reasons: list[str] = []
    if doc["pairs"] < rules.min_pairs:
        return "insufficient", [f"{doc['pairs']} paired windows, fewer than {rules.min_pairs}"]
    p99_p = doc["latency"]["primary"]["infer"]["p99_ms"]
    p99_c = doc["latency"]["candidate"]["infer"]["p99_ms"]
    if p99_p and p99_c and p99_c > rules.latency_ratio * p99_p:
        reasons.append(f"slower: inference p99 {p99_c} ms vs {p99_p} ms")
    if doc["labelled"] >= rules.min_labelled:
        diff = doc["accuracy"]["candidate"] - doc["accuracy"]["primary"]
        reasons.insert(0, f"accuracy {doc['accuracy']['candidate']} vs {doc['accuracy']['primary']} on "
                          f"{doc['labelled']} labelled windows")
        if diff < -rules.max_drop:
            return "worse", reasons
        return ("better" if diff > rules.max_drop else "equivalent"), reasons
    reasons.insert(0, f"agreement {doc['agreement']} on {doc['pairs']} windows, no labels "
                      f"({doc['labelled']} labelled, fewer than {rules.min_labelled})")
    return ("equivalent" if doc["agreement"] >= rules.min_agreement else "differs"), reasons


def render(doc: dict[str, Any]) -> str:
    """A human-readable view of a comparison document."""
    lat = doc["latency"]
    lines = [f"candidate {', '.join(doc['candidate_models']) or '-'} vs primary {', '.join(doc['primary_models']) or '-'}:"
             f" {doc['pairs']} paired windows ({doc['unmatched']} without a primary result yet)",
             f"agreement {doc['agreement']}"]
    lines += [f"  class {k}: {v['agreement']} of {v['windows']}" for k, v in doc["per_class"].items()]
    acc = doc["accuracy"]
    lines.append(f"accuracy on {doc['labelled']} labelled windows: primary {acc['primary']}, candidate {acc['candidate']}")
    for who in ("primary", "candidate"):
        lines.append(f"latency {who}: infer p50 {lat[who]['infer']['p50_ms']} / p99 {lat[who]['infer']['p99_ms']} ms, "
                     f"e2e p50 {lat[who]['e2e']['p50_ms']} / p99 {lat[who]['e2e']['p99_ms']} ms")
    lines.append(f"verdict: {doc['verdict']} ({'; '.join(doc['reasons'])})")
    return "\n".join(lines)
