"""The quality gate a candidate checkpoint passes before a worker serves it.

Checks, in order: the bytes parse without torch (:func:`training.model.checkpoint_file.parse`) and match the
registry's sha256 (checked by the caller); the checkpoint's wire version is this code's
(``incompatible_wire``); the wire version, feature count and class list match what is served (unless
the settings allow a change); the checkpoint carries a golden batch; its accuracy there reaches the
floor and is not below the serving model's accuracy on the same batch by more than the allowed drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.model.checkpoint_file import CheckpointError, CheckpointMeta, ServedCheckpoint, WireVersionError
from training.model.checkpoint_file import parse as parse_file
from worker.backends import ServingPredictor
from worker.config import default
from worker.golden import GOLDEN_CHUNK, golden_accuracy


class Refused(Exception):
    """A candidate failed the gate; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class GateRules:
    """Thresholds of the gate (from ``WorkerSettings.reload_*``)."""

    min_accuracy: float = default("reload_min_accuracy")
    max_drop: float = default("reload_max_drop")
    allow_schema_change: bool = default("reload_allow_schema_change")
    require_golden: bool = default("reload_require_golden")


@dataclass(frozen=True)
class Verdict:
    """What the gate measured for an accepted candidate."""

    accuracy: float | None
    serving_accuracy: float | None
    golden_size: int


def parse(data: bytes) -> ServedCheckpoint:
    """Checkpoint from bytes, read without torch; a corrupt or truncated file is refused as ``corrupt``,
    one made for another wire version (:data:`protocol.wire.WIRE_VERSION`) as ``incompatible_wire``."""
    try:
        return parse_file(data)
    except WireVersionError as e:
        raise Refused("incompatible_wire", str(e)) from e
    except CheckpointError as e:
        raise Refused("corrupt", str(e)) from e


def check_schema(ckpt: CheckpointMeta, serving: ServingPredictor, rules: GateRules) -> None:
    """Refuse a candidate whose input or output contract differs from the served one."""
    if ckpt.wire_version != serving.checkpoint.wire_version:
        raise Refused("incompatible_wire", f"wire version {ckpt.wire_version}, serving {serving.checkpoint.wire_version}")
    if rules.allow_schema_change:
        return
    if ckpt.input_dim != serving.n_features:
        raise Refused("incompatible_features", f"{ckpt.input_dim} features, serving {serving.n_features}")
    if list(ckpt.classes) != list(serving.classes):
        raise Refused("incompatible_classes", f"classes {ckpt.classes}, serving {serving.classes}")


def accuracy(pred: ServingPredictor, xs: list[np.ndarray], names: list[str], batch: int = GOLDEN_CHUNK) -> float:
    """Share of windows whose predicted class name equals the label's (:func:`worker.golden.golden_accuracy`)."""
    return golden_accuracy(pred.predict, pred.classes, xs, names, batch)


def judge(acc: float, serving_acc: float | None, rules: GateRules) -> None:
    """Refuse when ``acc`` is under the floor or more than ``max_drop`` below the serving accuracy."""
    if acc < rules.min_accuracy:
        raise Refused("below_floor", f"golden accuracy {acc:.4f} < floor {rules.min_accuracy:.4f}")
    if serving_acc is not None and acc < serving_acc - rules.max_drop:
        raise Refused("worse_than_serving",
                      f"golden accuracy {acc:.4f} < serving model's {serving_acc:.4f} - {rules.max_drop:.4f}")


def evaluate(ckpt: CheckpointMeta, candidate: ServingPredictor, serving: ServingPredictor, rules: GateRules) -> Verdict:
    """Run both models on the candidate's golden batch and judge; raises :class:`Refused`."""
    golden = ckpt.golden_batch()
    if golden is None:
        if rules.require_golden:
            raise Refused("no_golden_batch", "checkpoint carries no golden batch")
        return Verdict(None, None, 0)
    xs, names = golden
    try:
        acc = accuracy(candidate, xs, names)
    except Exception as e:  # a model that cannot run its own golden batch is broken
        raise Refused("golden_failed", f"{type(e).__name__}: {e}") from e
    comparable = serving.n_features == ckpt.input_dim
    serving_acc = accuracy(serving, xs, names) if comparable else None
    judge(acc, serving_acc, rules)
    return Verdict(acc, serving_acc, len(xs))
