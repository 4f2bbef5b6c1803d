"""Promote on evidence: the candidate in shadow against the serving model on labelled live windows.

:class:`EvidenceReader` reads, from the moment the candidate's shadow started, the primary results,
the shadow results (``model`` = the candidate) and the labels (``{bigru}:labels``, or a result's
``meta.label``), and pairs them by ``cid``. :class:`Judge` applies :func:`training.mcnemar.decide` and
acts: ``promote`` moves the registry's ``latest`` (``protocol.registry.promote``; the workers reload it
through their gate) and ends the shadow group, ``reject`` keeps serving and ends the shadow. Every
decision is an event on ``model:events`` (``decision``, with its numbers), the ``{prefix}:model:candidate``
hash (``status``), and a log line. A human overrides with ``bigru-train candidate veto|force``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from protocol import registry
from protocol.keys import Keys
from protocol.labels import LabelError, decode_label
from protocol.replies import as_str
from protocol.results import decode_any_result
from protocol.shadow_group import end_shadow
from protocol.wire import WireError
from training.mcnemar import Decision, Evidence, Rule, decide

log = structlog.get_logger("loop")

#: The states of ``{prefix}:model:candidate``.
STATES = ("shadowing", "promoted", "rejected", "vetoed")
#: What a human may ask of the candidate (``bigru-train candidate veto|force``).
OVERRIDES = ("veto", "force")


@dataclass
class EvidenceReader:
    """Incremental reader of the three streams from ``since_ms``; :meth:`evidence` counts the pairs."""

    r: redis.Redis
    keys: Keys
    candidate: str
    since_ms: int
    _cursors: dict[str, str] = field(default_factory=dict)
    primary: dict[str, str] = field(default_factory=dict)  # cid -> predicted class name
    shadow: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # cid -> true class name (the first one counts)

    def _read(self, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        start = self._cursors.get(stream, f"{self.since_ms}-0")
        rows: list[tuple[bytes, dict[bytes, bytes]]] = []
        while True:
            batch = self.r.xrange(stream, min=f"({start}" if stream in self._cursors else start, count=5000)
            if not batch:
                break
            rows += batch
            start = as_str(batch[-1][0])
            self._cursors[stream] = start
            if len(batch) < 5000:
                break
        return rows

    def _results(self, stream: str, into: dict[str, str], candidate: bool) -> None:
        for _, fields in self._read(stream):
            try:
                results = decode_any_result(fields)
            except (WireError, ValueError, KeyError):
                continue
            for res in results:
                if res.status != "ok" or not res.cid or (res.model == self.candidate) != candidate:
                    continue
                into.setdefault(res.cid, res.class_name)
                meta = res.meta.get("label") if res.meta else None
                if isinstance(meta, str):
                    self.labels.setdefault(res.cid, meta)

    def poll(self) -> None:
        """Read what arrived since the last poll."""
        primary, shadow = self.keys.as_primary(), self.keys.as_shadow()
        for s in range(self.keys.shards):
            self._results(primary.shard(s).results, self.primary, candidate=False)
            self._results(shadow.shard(s).results, self.shadow, candidate=True)
        for _, fields in self._read(self.keys.labels):
            try:
                lab = decode_label(fields)
            except LabelError:
                continue
            self.labels.setdefault(lab.cid, lab.label)

    def evidence(self) -> Evidence:
        """Counts over the cids that have a primary result, a shadow result and a label."""
        counts = [0, 0, 0, 0]
        for cid, truth in self.labels.items():
            p, c = self.primary.get(cid), self.shadow.get(cid)
            if p is None or c is None:
                continue
            counts[(p != truth) * 2 + (c != truth)] += 1
        return Evidence(both=counts[0], primary_only=counts[1], candidate_only=counts[2], neither=counts[3])


def propose(r: redis.Redis, keys: Keys, version: str, **info: Any) -> None:
    """Make ``version`` the loop's candidate (state ``shadowing`` from now) and announce it."""
    r.delete(keys.model_candidate)
    r.hset(keys.model_candidate, mapping={"version": version, "state": "shadowing", "since": repr(time.time()),
                                          "looks": 0, "override": "", "decision": "", **{k: str(v) for k, v in info.items()}})
    registry.announce(r, keys, "candidate", version, **info)


def candidate(r: redis.Redis, keys: Keys) -> dict[str, str]:
    """The ``{prefix}:model:candidate`` hash as text (empty without a candidate)."""
    return {as_str(k): as_str(v) for k, v in r.hgetall(keys.model_candidate).items()}


def override(r: redis.Redis, keys: Keys, action: str, who: str = "") -> dict[str, str]:
    """A human's ``veto`` (reject now) or ``force`` (promote now) of the shadowing candidate."""
    if action not in OVERRIDES:
        raise ValueError(f"override must be one of {OVERRIDES}, got {action!r}")
    cand = candidate(r, keys)
    if cand.get("state") != "shadowing":
        raise registry.RegistryError(f"no candidate in shadow (state {cand.get('state', 'none')!r})")
    r.hset(keys.model_candidate, mapping={"override": action, "override_by": who})
    return candidate(r, keys)


class Judge:
    """Decides on the current candidate; :meth:`step` returns the decision when one was made, else None."""

    def __init__(self, r: redis.Redis, keys: Keys, rule: Rule, stop_shadow: Callable[[], None] | None = None) -> None:
        """``stop_shadow`` stops the candidate's shadow replicas once a decision is made, before their group
        is ended (so none of them publishes into a group that is gone)."""
        self.r, self.keys, self.rule = r, keys, rule
        self.stop_shadow = stop_shadow
        self.reader: EvidenceReader | None = None

    def step(self) -> Decision | None:
        """Read new evidence and apply the rule (or a human's override) to the shadowing candidate."""
        cand = candidate(self.r, self.keys)
        if cand.get("state") != "shadowing":
            self.reader = None
            return None
        version, since = cand["version"], float(cand["since"])
        if self.reader is None or self.reader.candidate != version:
            self.reader = EvidenceReader(self.r, self.keys, version, int(since * 1000))
        self.reader.poll()
        ev = self.reader.evidence()
        d = decide(ev, self.rule, time.time() - since, int(cand.get("looks", 0)))
        if cand.get("override") in OVERRIDES:
            forced = "promote" if cand["override"] == "force" else "reject"
            d = Decision(forced, f"human {cand['override']} ({cand.get('override_by') or 'unnamed'}); the rule said "
                         f"{d.outcome}: {d.reason}", d.pairs, d.b, d.c, d.p_better, d.p_worse, d.alpha, d.look,
                         d.primary_accuracy, d.candidate_accuracy, d.elapsed_s)
        if d.looked and d.outcome == "wait":
            self.r.hincrby(self.keys.model_candidate, "looks", 1)
        self.r.hset(self.keys.model_candidate, "last_check", json.dumps(d.to_dict()))
        if d.outcome == "wait":
            return None
        self.act(version, d, vetoed=cand.get("override") == "veto")
        return d

    def act(self, version: str, d: Decision, vetoed: bool = False) -> None:
        """Carry out ``d``: promote (or not), end the shadow, record the decision everywhere."""
        state = "promoted" if d.outcome == "promote" else "vetoed" if vetoed else "rejected"
        if d.outcome == "promote":
            registry.promote(self.r, self.keys, version)
        if self.stop_shadow is not None:
            self.stop_shadow()
        ended = end_shadow(self.r, self.keys)
        doc = d.to_dict()
        self.r.hset(self.keys.model_candidate, mapping={"state": state, "decision": json.dumps(doc),
                                                        "decided_at": repr(time.time())})
        registry.announce(self.r, self.keys, "decision", version, state=state,
                          **{k: v for k, v in doc.items() if k not in ("looked",)})
        log.info("candidate_decision", version=version, state=state, shadow_groups_ended=ended, **doc)
