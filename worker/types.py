"""The worker's data types and interfaces, declared once: every stage imports them from here.

- :class:`Entry` (an input entry read from a shard stream), :class:`Batch` (one batch through the
  stages, with its multi-window :class:`Group` s) and :class:`Output` (what the publish stage writes
  for one input).
- :class:`Predictor` (a model backend) and :class:`ModelSource` (what supplies the served predictor,
  and falls back or forgets the previous one for the breaker): the Protocols declare every member
  the worker uses, so no caller probes for one.
- :class:`TraceRecord` (what tracing keeps on a batch).

The metrics hooks (``Observer``) live with the one object that calls them, ``worker.counters``; drift's
types in ``worker.drift_report``; the heartbeat document in ``worker.heartbeat_record``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: numpy and the model layer stay out of the light readers
    import numpy as np

    from protocol.entries import MultiWindow, Window
    from training.model.drift_ref import DriftReference

__all__ = ["Batch", "Entry", "Group", "ModelSource", "Output", "flat", "Predictor", "PredictorDefaults", "StaticModel",
           "TraceRecord"]


@dataclass(slots=True)
class Entry:
    """A stream entry read by this worker."""

    shard: int
    id: str
    fields: dict[bytes, bytes]
    read_us: int
    deliveries: int = 1
    size: int = 0  # bytes of field names and values (the batch byte budget counts these)
    windows: int = 1  # windows it holds (from ``x``'s headers; ``max_batch`` bounds their sum)


@dataclass(slots=True)
class Output:
    """What to publish for one input: a result (``kind='r'``) or a dead letter (``kind='d'``).

    ``fields`` are flat, ``[name, value, name, value, ...]``, in the order they are written (what the
    publish script takes; the batch encoder builds them so, :func:`flat` turns a dict into them).
    ``dead`` is the dead letter that goes with a result: the dead windows of a multi-window entry.
    """

    entry: Entry
    kind: str
    fields: list[bytes]
    dead: list[bytes] | None = None
    reply: str | None = None  # the input's reply stream name: the output also goes there

    def as_dict(self) -> dict[bytes, bytes]:
        """The fields as a dict (for readers and tests)."""
        return dict(zip(self.fields[::2], self.fields[1::2]))


def flat(fields: Mapping[bytes, bytes]) -> list[bytes]:
    """``{name: value, ...}`` as ``[name, value, ...]`` (the form :class:`Output` holds)."""
    return list(chain.from_iterable(fields.items()))


class Predictor(Protocol):
    """What the worker needs from a model backend (``worker.predictor``, ``worker.onnx_backend``)."""

    version: str
    classes: list[str]
    n_features: int

    @property
    def precision(self) -> str:
        """What it serves: ``fp32`` or ``int8`` (the heartbeat and status show it)."""
        ...

    @property
    def backend(self) -> str:
        """The runtime that serves: ``torch`` or ``onnx``."""
        ...

    @property
    def device(self) -> object:
        """The device it serves on (logged at start)."""
        ...

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [len(xs), C] for the [T_i, F] windows ``xs``."""
        ...

    def golden_windows(self) -> list[np.ndarray]:
        """The checkpoint's golden batch as raw windows (the breaker probes with it); empty when none."""
        ...

    @property
    def drift_reference(self) -> DriftReference | None:
        """The training statistics drift is measured against (``worker.drift``): the checkpoint's, or None
        when it carries none."""
        ...


class PredictorDefaults:
    """The members of :class:`Predictor` a stand-in model (tests, benchmarks) need not care about."""

    precision = "fp32"
    backend = "none"
    device = "cpu"

    def golden_windows(self) -> list[np.ndarray]:
        """No golden batch: the breaker probes with windows served recently."""
        return []

    @property
    def drift_reference(self) -> DriftReference | None:
        """No training statistics: drift is unknown."""
        return None


class ModelSource(Protocol):
    """Supplies the predictor; ``poll()`` runs between batches and may swap ``current``."""

    current: Predictor

    def poll(self) -> None:
        """Swap in a new version if one is waiting (loop thread, between batches)."""
        ...

    def forget_previous(self) -> None:
        """The breaker's fallback window passed: drop the version served before the last swap."""
        ...

    def fall_back(self, reason: str) -> str | None:
        """Serve the previous version again (the current one broke soon after a swap); the version now
        served, or None when there is none to fall back to."""
        ...

    def request_check(self) -> None:
        """Look for a new version now (SIGHUP)."""
        ...

    def close(self) -> None:
        """Stop any background threads."""
        ...


@dataclass
class StaticModel:
    """A model source that never changes."""

    current: Predictor

    def poll(self) -> None:
        """Nothing to reload."""

    def forget_previous(self) -> None:
        """There is no previous version."""

    def fall_back(self, reason: str) -> str | None:
        """There is no previous version to fall back to."""
        return None

    def request_check(self) -> None:
        """Nothing to check."""

    def close(self) -> None:
        """No threads."""


@dataclass
class Group:
    """A multi-window entry in a batch: its good windows are ``xs[offset:offset + len(good)]``."""

    entry: Entry
    mw: MultiWindow
    good: list[int]
    offset: int


@dataclass
class Batch:
    """One batch through the stages (``worker.stages``), from the moment its entries are read to the
    moment its outputs are published.

    The model sees ``xs``: the single-window entries' windows (``items``, in order) followed by the
    good windows of each multi-window entry (``groups``).
    """

    entries: list[Entry]
    model: Predictor
    items: list[tuple[Entry, Window]] = field(default_factory=list)  # single-window entries
    groups: list[Group] = field(default_factory=list)  # multi-window entries
    xs: list[np.ndarray] = field(default_factory=list)  # what the model sees
    outputs: list[Output] = field(default_factory=list)  # dead letters/expired at decode, then results
    probs: np.ndarray | None = None  # [len(xs), C]; rows of failed windows are NaN
    failed: dict[int, BaseException] = field(default_factory=dict)  # xs index -> error, after bisection
    batch_us: int = 0  # the forward pass began (unix µs)
    infer_s: float = 0.0
    pass_windows: int = 0  # windows in its largest forward pass (what results report as ``batch``)
    pub_us: int = 0  # outputs encoded, about to be published (unix µs)
    expired: int = 0
    t_submit: float = 0.0  # perf_counter when handed to the model (the batch-wait policy's service time)
    broken: str | None = None  # set by the breaker (worker.guard): the model, not the windows, failed
    trace: TraceRecord | None = None  # tracing's record of this batch (worker.tracing), when tracing is on

    @property
    def served(self) -> int:
        """Windows classified (not failed)."""
        return len(self.xs) - len(self.failed)


class TraceRecord(Protocol):
    """What tracing (``worker.tracing``) keeps on a batch; ``end`` records its spans once it is published."""

    def end(self, batch: Batch) -> None:
        """The batch is published: record its spans."""
        ...
