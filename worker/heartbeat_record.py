"""A replica's heartbeat document, :class:`HeartbeatRecord`: written by ``worker.liveness.Heartbeat``,
read by ``worker.health`` (``bigru-worker --check``, ``status``). Pure Python: a probe reads it fast."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from worker.drift_report import DriftSummary

__all__ = ["HeartbeatRecord"]


@dataclass(frozen=True)
class HeartbeatRecord:
    """A replica's heartbeat document (JSON in its heartbeat key and its workers-hash entry)."""

    consumer: str = ""
    host: str = ""
    pid: int = 0
    model: str = ""
    precision: str = "fp32"
    started: float = 0.0  # unix time the replica started
    ts: float = 0.0  # unix time of this beat
    results: int = 0
    dead: int = 0
    breaker: str = "closed"  # the breaker's state (``--check`` fails while it is ``open``)
    breaker_trips: int = 0
    breaker_reason: str = ""
    drift: DriftSummary | None = None  # the last drift reading's summary (worker.drift); None before one

    def to_json(self) -> str:
        """The document as written to Redis."""
        doc: dict[str, Any] = asdict(self)
        doc["drift"] = None if self.drift is None else self.drift.to_doc()  # an unknown reading: two keys
        return json.dumps(doc)

    @classmethod
    def from_json(cls, raw: str | bytes) -> HeartbeatRecord:
        """Parse a document (fields this version does not know are ignored, missing ones default)."""
        doc = json.loads(raw)
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in doc.items() if k in known}
        if kept.get("drift") is not None:
            kept["drift"] = DriftSummary.from_doc(kept["drift"])
        return cls(**kept)

