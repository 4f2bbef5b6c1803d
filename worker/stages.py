"""The decode, predict and encode stages of the batching loop, around one :class:`worker.types.Batch`.

A batch is the one representation of a batch from the moment its entries are read to the
moment its outputs are published: the entries, the windows that go to the model, the outputs
decided early (dead letters, expired windows), the predictions and the timestamps. Collect lives in
``worker.reader``, publish in ``worker.publisher``, the driver in ``worker.loop``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import structlog

from protocol.entries import MultiWindow, Window, decode_entries
from protocol.limits import DEAD_FIELD_BYTES
from protocol.result_batch import OkResults
from protocol.results import (
    Result,
    WindowOutcome,
    encode_dead,
    encode_dead_windows,
    encode_multi_result,
    encode_result,
    timing,
)
from protocol.wire import Limits, WireError, reply_or_none
from worker.types import Batch, Entry, Group, Output, Predictor, flat


class BatchMismatch(RuntimeError):
    """The predictor returned a different number of outputs than it was given inputs."""


DeadHook = Callable[[str], None]


class Stages:
    """Decode, predict and encode for one replica (consumer ``consumer``)."""

    def __init__(self, consumer: str, limits: Limits, max_deliveries: int, on_dead: DeadHook,
                 now_us: Callable[[], int], max_batch: int = 1 << 30) -> None:
        self.consumer = consumer
        self.max_batch = max_batch
        self.limits = limits
        self.max_deliveries = max_deliveries
        self.on_dead = on_dead
        self.now_us = now_us
        self.log = structlog.get_logger("worker").bind(consumer=consumer)

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
        decoded = decode_entries([e.fields for e in todo], self.limits, model.n_features)
        multi: list[tuple[Entry, MultiWindow]] = []
        for e, w in zip(todo, decoded):
            if isinstance(w, WireError):
                batch.outputs.append(self.dead(e, w.reason, w.detail))
            elif w.deadline_us is not None and now > w.deadline_us:
                batch.outputs.append(self._expired(e, w, model, now))
                batch.expired += 1 if isinstance(w, Window) else w.n - len(w.bad)
            elif isinstance(w, Window):
                batch.items.append((e, w))
            else:
                multi.append((e, w))
        batch.xs = [w.x for _, w in batch.items]
        for e, mw in multi:
            good = mw.good
            batch.groups.append(Group(e, mw, good, len(batch.xs)))
            batch.xs += list(mw.x[good]) if len(good) < mw.n else list(mw.x)
        batch.pass_windows = min(len(batch.xs), self.max_batch)  # predict() runs passes of max_batch
        return batch

    # -- predict --------------------------------------------------------------------------------

    def predict(self, batch: Batch) -> Batch:
        """Forward the batch (runs on the compute thread) in passes of at most ``max_batch`` windows
        (the collector bounds a batch to ``max_batch`` windows, except one larger entry served alone);
        a failure is isolated by bisection."""
        batch.batch_us = self.now_us()
        t0 = time.perf_counter()
        parts = []
        for lo in range(0, len(batch.xs), self.max_batch):
            xs = batch.xs[lo: lo + self.max_batch]
            try:
                parts.append(self._forward(batch.model, xs))
            except Exception as err:  # any model failure: find the failing windows by bisection
                parts.append(self._split(batch.model, xs, lo, batch.failed, err))
        if parts:
            batch.probs = parts[0] if len(parts) == 1 else np.concatenate(parts)
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

        The single-window results are encoded together from the batch's arrays
        (:class:`protocol.result_batch.OkResults`), byte-identical to :func:`protocol.results.encode_result`
        per window.
        """
        if not batch.xs:
            return batch.outputs
        model, probs = batch.model, batch.probs
        assert probs is not None
        if len(probs) != len(batch.xs):
            raise BatchMismatch(f"{len(probs)} outputs for {len(batch.xs)} inputs")
        pub_us = batch.pub_us = self.now_us()
        results = OkResults(model.classes, model.version, self.consumer, int(batch.infer_s * 1e6), pub_us,
                            batch.pass_windows)
        failed = batch.failed
        labels = np.argmax(np.nan_to_num(probs, nan=-1.0) if failed else probs, axis=1).tolist()
        items, out = batch.items, batch.outputs
        if items:
            n = len(items)
            ts = np.fromiter((w.ts_us for _, w in items), dtype=np.int64, count=n)
            read = np.fromiter((e.read_us for e, _ in items), dtype=np.int64, count=n)
            encoded = results.encode_many([e.id for e, _ in items], [w.cid for _, w in items], labels[:n],
                                          probs[:n].astype(np.float64), ts, read, batch.batch_us)
            pack = results.pack
            for i, ((e, w), fields) in enumerate(zip(items, encoded)):
                if failed and i in failed:
                    err = failed[i]
                    out.append(self.dead(e, "predict_failed", f"{type(err).__name__}: {err}", whole=True))
                    continue
                if w.meta:
                    fields += (b"meta", pack(w.meta))
                if w.span:
                    fields += (b"span", w.span)
                out.append(Output(e, "r", fields, None, w.reply))
        if batch.groups:
            rows = probs.astype(np.float64).tolist()
            for g in batch.groups:
                out.append(self._group_output(batch, g, rows, labels))
        return out

    def _group_output(self, batch: Batch, g: Group, rows: list[list[float]], labels: list[int]) -> Output:
        """The one result (plus a dead letter when some windows are dead) of a multi-window entry."""
        e, mw, classes = g.entry, g.mw, batch.model.classes
        outcomes: list[WindowOutcome] = []
        bad = dict(mw.bad)
        k = g.offset
        for i in range(mw.n):
            if i in mw.bad:
                outcomes.append(WindowOutcome("dead", reason=mw.bad[i]))
                continue
            if k in batch.failed:
                bad[i] = "predict_failed"
                outcomes.append(WindowOutcome("dead", reason="predict_failed"))
            else:
                outcomes.append(WindowOutcome("ok", labels[k], classes[labels[k]], rows[k]))
            k += 1
        t = timing(mw.ts_us, e.read_us, batch.batch_us, batch.pub_us, int(batch.infer_s * 1e6), batch.pass_windows)
        fields = encode_multi_result(e.id, outcomes, cid=mw.cid, cids=mw.cids, model=batch.model.version,
                                     worker=self.consumer, **t._asdict(), meta=mw.meta, spans=mw.spans)
        return Output(e, "r", flat(fields), self._dead_windows(e, bad), mw.reply)

    def _dead_windows(self, e: Entry, bad: dict[int, str]) -> list[bytes] | None:
        if not bad:
            return None
        fields = encode_dead_windows(e.fields, input_id=e.id, bad=bad, worker=self.consumer, deliveries=e.deliveries)
        reason = fields[b"dead.reason"].decode()
        self.on_dead(reason)
        self.log.warning("dead_letter_windows", id=e.id, reason=reason, windows=sorted(bad)[:20], count=len(bad))
        return flat(fields)

    # -- early outputs --------------------------------------------------------------------------

    def dead(self, e: Entry, reason: str, detail: str, whole: bool = False) -> Output:
        """A dead-letter output for ``e`` (counted and logged).

        ``whole``: the entry passed validation, so its fields are at most ``max_window_bytes`` and are
        kept whole (not truncated at 64 KiB), so that ``bigru-worker redrive`` can move it back.
        """
        self.on_dead(reason)
        self.log.warning("dead_letter", id=e.id, reason=reason, detail=detail[:200])
        cap = max(DEAD_FIELD_BYTES, self.limits.max_window_bytes) if whole else DEAD_FIELD_BYTES
        return Output(e, "d", flat(encode_dead(e.fields, input_id=e.id, reason=reason, detail=detail,
                                               worker=self.consumer, deliveries=e.deliveries, max_field_bytes=cap)),
                      reply=reply_or_none(e.fields))

    def _expired(self, e: Entry, w: Window | MultiWindow, model: Predictor, now: int) -> Output:
        """The ``expired`` result of an entry whose deadline passed before batching."""
        t = timing(w.ts_us, e.read_us, e.read_us, now, 0, 0)  # never batched: no wait, no forward pass
        if isinstance(w, Window):
            fields = encode_result(Result(
                input_id=e.id, cid=w.cid, status="expired", label=-1, class_name="", probs=[],
                model=model.version, worker=self.consumer, **t._asdict(), meta=w.meta,
            ))
            if w.span:
                fields[b"span"] = w.span
            return Output(e, "r", flat(fields), reply=w.reply)
        rows = [WindowOutcome("dead", reason=w.bad[i]) if i in w.bad else WindowOutcome("expired") for i in range(w.n)]
        fields = encode_multi_result(e.id, rows, cid=w.cid, cids=w.cids, model=model.version, worker=self.consumer,
                                     **t._asdict(), meta=w.meta, spans=w.spans)
        return Output(e, "r", flat(fields), self._dead_windows(e, dict(w.bad)), w.reply)
