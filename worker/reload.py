"""Hot reload: a model source that follows the registry (and a checkpoint root) and swaps between batches.

A worker learns that ``latest`` may have moved from three triggers: an announcement on the events stream
(a watcher thread blocks on it), a periodic check (so a missed announcement does no harm) and SIGHUP.
Every trigger wakes one checker thread, which reads the registry pointer and, when configured, the
checkpoint root's ``latest`` file. A candidate is fetched, verified (sha256, schema, golden batch) and
warmed up on that thread; the serving loop only swaps the reference in :meth:`ReloadingSource.poll`,
between batches. A refused candidate is logged, noted in the registry and never served.

Versions only move forward (they sort by creation time), except when the registry pointer was moved
by ``promote``: that is an explicit rollback (or roll-to) and is followed whatever its age.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

from protocol import registry
from protocol.redisconn import TRANSIENT
from training.model.checkpoint_file import CheckpointError, is_root, load_served, read_latest, version_file
from training.model.checkpoint_file import parse as parse_file
from worker import memory
from worker.backends import ServingPredictor, make_predictor
from worker.config import Reloading, WorkerSettings
from worker.counters import Counters
from worker.gate import GateRules, Refused, check_schema, evaluate, parse
from worker.types import ModelSource, Predictor, StaticModel

#: Seconds after a swap before freed memory is given back (batches on the old model publish first).
RELEASE_AFTER_S = 2.0


@dataclass(frozen=True)
class Candidate:
    """A version that may replace the served one, and how to get its bytes."""

    version: str
    origin: str  # "registry" or "dir"
    seq: int  # registry pointer seq (0 for the directory)
    action: str
    load: Callable[[], bytes]


def rules_from(settings: Reloading) -> GateRules:
    """The gate thresholds configured in ``settings``."""
    return GateRules(
        min_accuracy=settings.reload_min_accuracy, max_drop=settings.reload_max_drop,
        allow_schema_change=settings.reload_allow_schema_change, require_golden=settings.reload_require_golden,
    )


def checkpoint_root(settings: WorkerSettings) -> Path | None:
    """The directory whose ``latest`` pointer to follow, or None (a file or version dir is pinned)."""
    p = Path(settings.checkpoint)
    return p if settings.reload_follow_dir and is_root(p) else None


class ReloadingSource:
    """A :class:`~worker.types.ModelSource` that hot-swaps verified checkpoints between batches."""

    def __init__(
        self, r: redis.Redis, settings: WorkerSettings, consumer: str, initial: ServingPredictor,
        counters: Counters | None = None,
    ) -> None:
        self.r = r
        self.counters = counters or Counters()  # reload outcomes and the version served go to the metrics here
        self.s = settings
        self.keys = settings.keys
        self.consumer = consumer
        self.rules = rules_from(settings)
        self.root = checkpoint_root(settings)
        self.current: Predictor = initial
        self._served = initial  # the same object as ``current``, typed for the gate
        self.previous: ServingPredictor | None = None  # the version served before the last swap
        self.swaps = 0
        self.refused: dict[str, str] = {}  # version -> reason, for this worker's lifetime
        self.log = structlog.get_logger("reload").bind(consumer=consumer)
        self._pending: ServingPredictor | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = 0  # registry pointer seq already acted on
        self._dir_seen = self._read_dir_latest()
        self._threads: list[threading.Thread] = []
        self._release_at = 0.0  # monotonic time to give freed memory back after a swap (0: none due)

    # -- serving side (main thread) -------------------------------------------------------------

    def poll(self) -> None:
        """Swap in an accepted candidate, if one is waiting (called by the loop between batches)."""
        if self._release_at and time.monotonic() >= self._release_at:
            self._release_at = 0.0  # the old model's batches are published by now: give its memory back
            memory.release()
        if self._pending is None:
            return
        with self._lock:
            new, self._pending = self._pending, None
        if new is None:
            return
        old = self._served
        self.current = self._served = new
        self.previous = old
        self.swaps += 1
        self.log.info("model_swapped", version=new.version, previous=old.version)
        self.counters.reload(True, new.version)
        self.counters.model_version(new.version)
        self._release_at = time.monotonic() + RELEASE_AFTER_S

    def forget_previous(self) -> None:
        """The fallback window passed (``worker.guard``): drop the previous version, give its memory back."""
        if self.previous is not None:
            self.previous = None
            self._release_at = time.monotonic() + RELEASE_AFTER_S

    def fall_back(self, reason: str) -> str | None:
        """The served version broke soon after its swap (``worker.guard``): serve the previous one again
        and refuse the broken one (logged, noted in the registry, never served again by this worker
        unless promoted). Returns the version now served, or None when there is no previous one."""
        prev, bad = self.previous, self._served
        if prev is None:
            return None
        self.current = self._served = prev
        self.previous = None
        self.refused[bad.version] = "broken_after_reload"
        self.log.error("model_fell_back", version=prev.version, refused=bad.version, reason=reason[:300])
        self.counters.reload(False, bad.version)
        self.counters.model_version(prev.version)
        try:
            registry.note_refusal(self.r, self.keys, bad.version, self.consumer, "broken_after_reload", reason)
        except TRANSIENT as e:
            self.log.warning("refusal_note_failed", version=bad.version, error=str(e))
        return prev.version

    def request_check(self) -> None:
        """Wake the checker now (announcements, SIGHUP)."""
        self._wake.set()

    def start(self) -> ReloadingSource:
        """Start the checker and announcement-watcher threads; the first check runs at once."""
        self._wake.set()
        for name, target in (("model-checker", self._check_loop), ("model-watcher", self._watch_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        """Stop the background threads."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=3)

    # -- checking side (background thread) --------------------------------------------------------

    def check(self) -> str | None:
        """Look for a newer (or promoted) version, verify it and queue it; returns the version queued."""
        cand = self._next_candidate()
        return None if cand is None else self._try(cand)

    def _effective(self) -> ServingPredictor:
        pending = self._pending
        return pending if pending is not None else self._served

    def _read_dir_latest(self) -> str | None:
        return None if self.root is None else read_latest(self.root)

    def _next_candidate(self) -> Candidate | None:
        served = self._effective().version
        ptr = registry.read_pointer(self.r, self.keys)
        if ptr is not None and ptr.seq != self._seq:
            if ptr.version == served:
                self._seq = ptr.seq
            elif ptr.action == "promoted" or ptr.version > served:
                version = ptr.version
                return Candidate(version, "registry", ptr.seq, ptr.action,
                                 lambda: registry.fetch(self.r, self.keys, version)[1])
            else:
                self.log.info("model_not_newer", version=ptr.version, serving=served, action=ptr.action)
                self._seq = ptr.seq
        seen = self._read_dir_latest()
        if seen is not None and seen != self._dir_seen:
            self._dir_seen = seen
            root = self.root
            assert root is not None
            if seen > served and seen not in self.refused:
                return Candidate(seen, "dir", 0, "published", lambda: version_file(root, seen).read_bytes())
        return None

    def _try(self, cand: Candidate) -> str | None:
        t0 = time.perf_counter()
        serving = self._effective()
        try:
            try:
                data = cand.load()
            except registry.IntegrityError as e:
                raise Refused("sha256_mismatch", str(e)) from e
            except registry.RegistryError as e:
                raise Refused("not_registered", str(e)) from e
            except OSError as e:
                raise Refused("unreadable", str(e)) from e
            ckpt = parse(data)
            if ckpt.version != cand.version:
                raise Refused("version_mismatch", f"pointer names {cand.version}, file holds {ckpt.version}")
            check_schema(ckpt, serving, self.rules)
            try:
                pred = make_predictor(ckpt, self.s.device, self.s.backend, self.s.torch_threads,
                                      self.s.precision, self.s.reload_max_drop)
            except Exception as e:  # e.g. weights that cannot run on this device
                raise Refused("load_failed", f"{type(e).__name__}: {e}") from e
            verdict = evaluate(ckpt, pred, serving, self.rules)
        except Refused as e:
            self._refuse(cand, serving, e)
            return None
        with self._lock:
            self._pending = pred
        if cand.origin == "registry":
            self._seq = cand.seq
        self.log.info("model_accepted", version=cand.version, origin=cand.origin, action=cand.action,
                      serving=serving.version, accuracy=verdict.accuracy, serving_accuracy=verdict.serving_accuracy,
                      golden=verdict.golden_size, verify_ms=round((time.perf_counter() - t0) * 1000, 1))
        return cand.version

    def _refuse(self, cand: Candidate, serving: ServingPredictor, err: Refused) -> None:
        self.refused[cand.version] = err.reason
        if cand.origin == "registry":
            self._seq = cand.seq
        self.log.warning("model_refused", version=cand.version, origin=cand.origin, reason=err.reason,
                         detail=err.detail[:300], serving=serving.version)
        self.counters.reload(False, cand.version)
        try:
            registry.note_refusal(self.r, self.keys, cand.version, self.consumer, err.reason, err.detail)
        except TRANSIENT as e:
            self.log.warning("refusal_note_failed", version=cand.version, error=str(e))

    def _check_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.s.reload_interval_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.check()
            except TRANSIENT as e:
                self.log.warning("reload_check_failed", error=str(e))
            except Exception:  # never let the checker die; the next trigger retries
                self.log.exception("reload_check_crashed")

    def _watch_loop(self) -> None:
        last: Any = None
        while not self._stop.is_set():
            try:
                if last is None:
                    top = self.r.xrevrange(self.keys.model_events, count=1)
                    last = top[0][0] if top else b"0-0"
                got = self.r.xread({self.keys.model_events: last}, count=100, block=1000)
            except TRANSIENT as e:
                self.log.debug("model_watch_failed", error=str(e))
                self._stop.wait(1.0)
                continue
            for _stream, items in got or []:
                for entry_id, fields in items:
                    last = entry_id
                    if fields.get(b"event") in (b"published", b"promoted"):
                        self._wake.set()


def initial_predictor(settings: WorkerSettings, r: redis.Redis) -> ServingPredictor:
    """The model to start with: the configured checkpoint, else (when reloading) the registry's latest.

    The checkpoint is read without torch (:func:`training.model.checkpoint_file.load_served`); one made for
    another wire version is refused (:class:`~training.model.checkpoint_file.WireVersionError`).
    """
    log = structlog.get_logger("reload")
    try:
        ckpt = load_served(settings.checkpoint)
    except CheckpointError as e:
        ptr = registry.read_pointer(r, settings.keys) if settings.reload else None
        if ptr is None:
            raise
        log.warning("local_checkpoint_unavailable", checkpoint=settings.checkpoint, error=str(e), registry=ptr.version)
        try:
            ckpt = parse_file(registry.fetch(r, settings.keys, ptr.version)[1])
        except registry.RegistryError as e2:
            raise CheckpointError(f"no usable checkpoint: {e}; registry: {e2}") from e2
    return make_predictor(ckpt, settings.device, settings.backend, settings.torch_threads, settings.precision,
                          settings.reload_max_drop)


def open_source(settings: WorkerSettings, r: redis.Redis, consumer: str, counters: Counters | None = None) -> ModelSource:
    """The replica's model source: reloading (started) unless ``settings.reload`` is off; a shadow
    replica's fixed candidate (``worker.shadow``)."""
    if settings.shadow_version:
        from worker.shadow import shadow_predictor

        return StaticModel(shadow_predictor(settings, r))
    pred = initial_predictor(settings, r)
    if not settings.reload:
        return StaticModel(pred)
    return ReloadingSource(r, settings, consumer, pred, counters).start()


def install_sighup(source: ModelSource) -> None:
    """SIGHUP forces a check for a new version (main thread only)."""
    if not hasattr(signal, "SIGHUP"):  # not on Windows
        return
    signal.signal(signal.SIGHUP, lambda signum, frame: source.request_check())
