"""Issue 27's seam, read from the code: every loop part is made in ``LoopParts.build``, only
``worker.counters`` tells the metrics, drift needs no probe, the heartbeat holds no untyped dict, and
the "batch published" event reaches its listeners in order."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import numpy as np

from worker.counters import Counters, Observer
from worker.drift_report import DriftReport, DriftSummary, drift_lines
from worker.events import Listeners
from worker.heartbeat_record import HeartbeatRecord
from worker.types import Batch, PredictorDefaults

ROOT = Path(__file__).resolve().parents[2]
WORKER = sorted((ROOT / "worker").glob("*.py"))
#: The hooks of :class:`worker.counters.Observer`.
HOOKS = {n for n, v in vars(Observer).items() if callable(v) and not n.startswith("_")}
#: The classes the project defines (a call to one of these is a part being built).
PROJECT_CLASSES = {node.name for f in WORKER for node in ast.walk(ast.parse(f.read_text()))
                   if isinstance(node, ast.ClassDef)}


def _method(path: Path, cls: str, name: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{cls}.{name} not found in {path}")


def built_in(fn: ast.FunctionDef) -> list[str]:
    """Project classes constructed in ``fn``: ``Name(...)`` or ``Name.classmethod(...)`` of a class the worker defines."""
    out = []
    for n in ast.walk(fn):
        if isinstance(n, ast.Call):
            f = n.func.value if isinstance(n.func, ast.Attribute) else n.func
            if isinstance(f, ast.Name) and f.id in PROJECT_CLASSES:
                out.append(f.id)
    return out


def test_worker_loop_builds_nothing_itself() -> None:
    """Every collaborator is made by ``LoopParts.build`` (7 were made in ``WorkerLoop.__init__`` before)."""
    init = _method(ROOT / "worker" / "loop.py", "WorkerLoop", "__init__")
    assert built_in(init) == ["LoopParts"]  # LoopParts.build, and nothing else
    build = _method(ROOT / "worker" / "loop.py", "LoopParts", "build")
    assert {"Counters", "ModelGuard", "Compute", "Pulse", "HeldBatches", "ClaimKeeper", "DriftMonitor", "Listeners"} \
        <= set(built_in(build))


def observer_calls(path: Path) -> list[str]:
    """Calls of an observer hook on anything but a ``counters`` object (``self.x(...)`` of a method the file
    defines itself is that method)."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in HOOKS:
            receiver = ast.unparse(node.func.value)
            if not receiver.endswith("counters") and not (receiver == "self" and node.func.attr in own):
                out.append(f"{path.name}: {receiver}.{node.func.attr}")
    return out


def test_only_counters_tells_the_observer() -> None:
    """3 paths and 5 hand calls in ``finish`` before; now ``worker.counters`` alone calls the hooks."""
    outside = [line for f in WORKER if f.name not in ("counters.py", "metrics.py") for line in observer_calls(f)]
    assert outside == []
    inside = observer_calls(ROOT / "worker" / "counters.py")
    assert inside and all(line.startswith("counters.py: o.") for line in inside), inside
    assert not any("observer" in ast.unparse(n) for f in WORKER if f.name not in ("counters.py", "loop.py")
                   for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Attribute) and n.attr == "observer")


def test_no_runtime_protocol_probes_in_the_worker() -> None:
    text = "\n".join(f.read_text() for f in WORKER)
    assert "runtime_checkable" not in text and "Checkpointed" not in text
    assert PredictorDefaults().drift_reference is None


def test_the_heartbeat_holds_no_untyped_dict() -> None:
    hints = typing.get_type_hints(HeartbeatRecord)
    assert not [name for name, t in hints.items() if "dict" in str(t) or "Any" in str(t)], hints
    assert hints["drift"] == DriftSummary | None
    assert dataclasses.fields(DriftSummary) and DriftSummary.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_heartbeat_bytes_are_unchanged() -> None:
    """The document as the dict-based heartbeat wrote it: an unknown reading has two keys, a known one nine."""
    unknown = HeartbeatRecord(consumer="w-0", drift=DriftReport("v1", known=False).summary())
    assert unknown.to_json().endswith('"drift": {"known": false, "model": "v1"}}')
    rep = DriftReport("v2", True, 512, [0.01, 0.4, 0.3], 0.05, 0.91234567, 0.9)
    doc = HeartbeatRecord(drift=rep.summary()).to_json()
    assert doc.endswith('"drift": {"known": true, "model": "v2", "windows": 512, "max_psi": 0.4, "max_feature": 1, '
                        '"features_over_act": [1, 2], "prediction_psi": 0.05, "top_prob_mean": 0.9123, '
                        '"reference_top_prob": 0.9}}')
    back = HeartbeatRecord.from_json(doc)
    assert back.drift == rep.summary() and back.to_json() == doc
    assert HeartbeatRecord.from_json(HeartbeatRecord().to_json()).drift is None
    lines = drift_lines([("w-0", back.drift), ("w-1", unknown.drift)])  # type: ignore[list-item]
    assert "act" in lines[2] and "features over 0.25: 1, 2" in lines[3] and "no drift statistics" in lines[4]


class _Model(PredictorDefaults):
    version, classes, n_features = "v1", ["a", "b"], 1

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.full((len(xs), 2), 0.5, np.float32)


class _Told(Observer):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def batch(self, batch: Batch) -> None:
        self.seen.append("batch")

    def dead(self, reason: str) -> None:
        self.seen.append(f"dead:{reason}")

    def reload(self, accepted: bool, version: str) -> None:
        self.seen.append(f"reload:{accepted}:{version}")


def test_counters_tell_the_tally_and_the_observer_alike() -> None:
    told = _Told()
    c = Counters(told)
    b = Batch([], _Model())
    b.xs = [np.zeros((2, 1), np.float32)]
    b.pass_windows = 1
    c.on_published(b)
    c.dead("bad")
    c.reload(False, "v9")
    assert told.seen == ["batch", "dead:bad", "reload:False:v9"]
    assert (c.stats.batches, c.stats.results, c.stats.dead, list(c.stats.batch_sizes)) == (1, 1, 1, [1])


def test_listeners_run_in_order() -> None:
    seen: list[str] = []

    class L:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_published(self, batch: Batch) -> None:
            seen.append(self.name)

    ls = Listeners([L("policy"), L("counts")])
    ls.add(L("guard"))
    ls.published(Batch([], _Model()))
    assert seen == ["policy", "counts", "guard"] and len(ls) == 3
