"""The decode, predict and encode stages of the batching loop, around one :class:`Batch`.

A :class:`Batch` is the one representation of a batch from the moment its entries are read to the
moment its outputs are published: the entries, the windows that go to the model, the outputs
decided early (dead letters, expired windows), the predictions and the timestamps. Collect lives in
``worker.reader``, publish in ``worker.publisher``, the driver in ``worker.loop``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgpack
import numpy as np
import structlog

from worker.publisher import Output
from worker.reader import Entry
from worker.wire import WIRE_VERSION, Limits, Result, Window, WireError, decode_windows, encode_dead, encode_result


class Predictor(Protocol):
    """What the loop needs from a model backend."""

    version: str
    classes: list[str]
    n_features: int

    def predict(self, xs: list[np.ndarray]) -> np.ndarray: ...


class BatchMismatch(RuntimeError):
    """The predictor returned a different number of outputs than it was given inputs."""


@dataclass
class Batch:
    """One batch through the stages (see the module docstring)."""

    entries: list[Entry]
    model: Predictor
    items: list[tuple[Entry, Window]] = field(default_factory=list)  # what the model sees
    outputs: list[Output] = field(default_factory=list)  # dead letters/expired at decode, then results
    probs: np.ndarray | None = None  # [len(items), C]; rows of failed windows are NaN
    failed: dict[int, BaseException] = field(default_factory=dict)  # item index -> error, after bisection
    batch_us: int = 0  # the forward pass began (unix µs)
    infer_s: float = 0.0
    pub_us: int = 0  # outputs encoded, about to be published (unix µs)
    expired: int = 0
    t_submit: float = 0.0  # perf_counter when handed to the model (the batch-wait policy's service time)

    @property
    def served(self) -> int:
        """Windows classified (not failed)."""
        return len(self.items) - len(self.failed)


DeadHook = Callable[[str], None]


class Stages:
    """Decode, predict and encode for one replica (consumer ``consumer``)."""

    def __init__(self, consumer: str, limits: Limits, max_deliveries: int, on_dead: DeadHook,
                 now_us: Callable[[], int]) -> None:
        self.consumer = consumer
        self.limits = limits
        self.max_deliveries = max_deliveries
        self.on_dead = on_dead
        self.now_us = now_us
        self.log = structlog.get_logger("worker").bind(consumer=consumer)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._consumer_b = consumer.encode()

    # -- decode ---------------------------------------------------------------------------------

    def decode(self, entries: list[Entry], model: Predictor) -> Batch:
        """Validate entries; invalid, over-delivered or expired ones become outputs right away."""
        batch = Batch(entries, model)
        now = self.now_us()
        todo = []
        for e in entries:
            if e.deliveries > self.max_deliveries:
                batch.outputs.append(self.dead(e, "max_deliveries", f"delivered {e.deliveries} times"))
            else:
                todo.append(e)
        decoded = decode_windows([e.fields for e in todo], self.limits, model.n_features)
        for e, w in zip(todo, decoded):
            if isinstance(w, WireError):
                batch.outputs.append(self.dead(e, w.reason, w.detail))
            elif w.deadline_us is not None and now > w.deadline_us:
                batch.outputs.append(Output(e, "r", encode_result(self._expired(e, w, model, now))))
                batch.expired += 1
            else:
                batch.items.append((e, w))
        return batch

    # -- predict --------------------------------------------------------------------------------

    def predict(self, batch: Batch) -> Batch:
        """Forward the batch (runs on the compute thread); a failure is isolated by bisection."""
        batch.batch_us = self.now_us()
        t0 = time.perf_counter()
        if batch.items:
            xs = [w.x for _, w in batch.items]
            try:
                batch.probs = self._forward(batch.model, xs)
            except Exception as err:  # any model failure: find the failing windows by bisection
                batch.probs = self._split(batch.model, xs, 0, batch.failed, err)
        batch.infer_s = time.perf_counter() - t0
        return batch

    @staticmethod
    def _forward(model: Predictor, xs: list[np.ndarray]) -> np.ndarray:
        probs = model.predict(xs)
        if len(probs) != len(xs):
            raise BatchMismatch(f"predictor returned {len(probs)} outputs for {len(xs)} inputs")
        return probs

    def _split(self, model: Predictor, xs: list[np.ndarray], offset: int, failed: dict[int, BaseException],
               err: Exception) -> np.ndarray:
        """``xs`` failed with ``err``: a single window is dead, a larger batch is retried in halves."""
        if len(xs) == 1:
            failed[offset] = err
            return np.full((1, len(model.classes)), np.nan, dtype=np.float32)
        mid = len(xs) // 2
        return np.concatenate([self._try(model, xs[:mid], offset, failed), self._try(model, xs[mid:], offset + mid, failed)])

    def _try(self, model: Predictor, xs: list[np.ndarray], offset: int, failed: dict[int, BaseException]) -> np.ndarray:
        try:
            return self._forward(model, xs)
        except Exception as err:
            return self._split(model, xs, offset, failed, err)

    # -- encode ---------------------------------------------------------------------------------

    def encode(self, batch: Batch) -> list[Output]:
        """Append one result (or dead letter) per predicted window to ``batch.outputs``.

        Byte-identical to :func:`worker.wire.encode_result` per window; the fields every result of
        the batch shares, and each class's label fields, are encoded once.
        """
        if not batch.items:
            return batch.outputs
        model, probs = batch.model, batch.probs
        assert probs is not None
        if len(probs) != len(batch.items):
            raise BatchMismatch(f"{len(probs)} outputs for {len(batch.items)} inputs")
        pub_us = batch.pub_us = self.now_us()
        batch_us = batch.batch_us
        v = str(WIRE_VERSION).encode()
        ok, model_b, worker_b = b"ok", model.version.encode(), self._consumer_b
        infer_b, ts_b, size_b = str(int(batch.infer_s * 1e6)).encode(), str(pub_us).encode(), str(len(batch.items)).encode()
        classes = [(str(i).encode(), c.encode()) for i, c in enumerate(model.classes)]
        labels = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1).tolist()
        rows = probs.astype(np.float64).tolist()
        pack = self._packer.pack
        out = batch.outputs
        failed = batch.failed
        for i, ((e, w), row, label) in enumerate(zip(batch.items, rows, labels)):
            if failed and i in failed:
                err = failed[i]
                out.append(self.dead(e, "predict_failed", f"{type(err).__name__}: {err}"))
                continue
            ts = w.ts_us
            lab = classes[label]
            fields = {
                b"v": v, b"in": e.id.encode(), b"cid": w.cid.encode(), b"status": ok, b"label": lab[0],
                b"class": lab[1], b"probs": pack(row), b"model": model_b, b"worker": worker_b,
                b"queue_us": str(max(0, e.read_us - ts)).encode(), b"wait_us": str(max(0, batch_us - e.read_us)).encode(),
                b"infer_us": infer_b, b"e2e_us": str(max(0, pub_us - ts)).encode(), b"ts": ts_b, b"batch": size_b,
            }
            if w.meta:
                fields[b"meta"] = pack(w.meta)
            out.append(Output(e, "r", fields))
        return out

    # -- early outputs --------------------------------------------------------------------------

    def dead(self, e: Entry, reason: str, detail: str) -> Output:
        """A dead-letter output for ``e`` (counted and logged)."""
        self.on_dead(reason)
        self.log.warning("dead_letter", id=e.id, reason=reason, detail=detail[:200])
        return Output(e, "d", encode_dead(e.fields, input_id=e.id, reason=reason, detail=detail,
                                          worker=self.consumer, deliveries=e.deliveries))

    def _expired(self, e: Entry, w: Window, model: Predictor, now: int) -> Result:
        return Result(
            input_id=e.id, cid=w.cid, status="expired", label=-1, class_name="", probs=[],
            model=model.version, worker=self.consumer, queue_us=max(0, e.read_us - w.ts_us),
            wait_us=0, infer_us=0, e2e_us=max(0, now - w.ts_us), ts_us=now, batch=0, meta=w.meta,
        )
