"""``bigru-train watch``: retrain on a rule, shadow the candidate, promote it on evidence — without a human step.

Each ``watch_poll_s`` the watcher reads the recorder's count of labelled windows (``{prefix}:recorder``)
and the primary replicas' drift (their heartbeats in ``{prefix}:workers``), and retrains
(:func:`training.retrain.retrain`) when **any** rule holds and no candidate is in shadow:

- ``watch_min_labels`` new labelled windows since the last retrain;
- a max feature PSI at or above ``watch_drift_psi`` held for ``watch_drift_hold_s``, with at least
  ``watch_drift_min_labels`` new labelled windows;
- ``watch_every_s`` passed since the last retrain (a schedule);

never sooner than ``watch_min_gap_s`` after the last. The candidate is published (never latest),
proposed (``{prefix}:model:candidate``) and scored in shadow: the watcher starts ``shadow_replicas``
shadow replicas as child processes (``bigru-worker --shadow-version V``) unless that is 0, and stops
them once :class:`training.promotion.Judge` decided. A retrain that fails is logged and counted
(``retrain_failed``); the serving model is untouched. State: the ``{prefix}:loop`` hash.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import redis
import structlog

from protocol import registry
from protocol.replies import as_str
from protocol.settings import cli_settings
from training.loop_settings import LoopSettings
from training.mcnemar import Rule
from training.promotion import Judge, candidate, override, propose
from training.retrain import RetrainError, retrain
from training.run import RunOptions
from training.train import TrainConfig

log = structlog.get_logger("loop")


def rule_of(s: LoopSettings) -> Rule:
    """The promotion rule of these settings."""
    return Rule(s.promote_confidence, s.promote_min_pairs, s.promote_max_pairs, s.promote_min_wait_s, s.promote_max_wait_s)


def max_drift_psi(r: redis.Redis, s: LoopSettings, serving: str) -> float | None:
    """The largest max feature PSI over the primary replicas' heartbeats whose reading is of the ``serving``
    version (a reading of the model before a promotion says nothing about its successor); None without one."""
    worst: float | None = None
    for raw in r.hvals(s.keys.as_primary().workers):
        try:
            drift = json.loads(raw).get("drift") or {}
        except (ValueError, AttributeError):
            continue
        psi = drift.get("max_psi") if drift.get("model") == serving else None
        if isinstance(psi, (int, float)) and (worst is None or psi > worst):
            worst = float(psi)
    return worst


class Watcher:
    """The loop's driver; :meth:`step` runs one check (retrain and/or judge)."""

    def __init__(self, r: redis.Redis, s: LoopSettings, opts: RunOptions, tcfg: TrainConfig,
                 shadow_env: dict[str, str] | None = None) -> None:
        self.r, self.s, self.keys, self.opts, self.tcfg = r, s, s.keys, opts, tcfg
        self.judge = Judge(r, self.keys, rule_of(s), stop_shadow=self._stop_shadow)
        self.shadow_env = shadow_env
        self.shadow: subprocess.Popen[bytes] | None = None
        state = {as_str(k): as_str(v) for k, v in r.hgetall(self.keys.loop).items()}
        self.labels_at = int(state.get("labels_at_retrain", "0"))
        self.last_retrain = float(state.get("last_retrain", "0"))
        self.drift_since: float | None = None

    def labelled(self) -> int:
        """Labelled windows the recorder has joined so far."""
        return int(self.r.hget(self.keys.recorder, "joined") or 0)

    def due(self, now: float) -> str | None:
        """Which rule calls for a retrain now (None: none)."""
        if now - self.last_retrain < self.s.watch_min_gap_s:
            return None
        new = self.labelled() - self.labels_at
        ptr = registry.read_pointer(self.r, self.keys)
        psi = max_drift_psi(self.r, self.s, ptr.version) if ptr else None
        if psi is not None and psi >= self.s.watch_drift_psi:
            self.drift_since = self.drift_since or now
        else:
            self.drift_since = None
        if self.s.watch_min_labels and new >= self.s.watch_min_labels:
            return f"labels: {new} new labelled windows >= {self.s.watch_min_labels}"
        if (self.drift_since is not None and now - self.drift_since >= self.s.watch_drift_hold_s
                and new >= self.s.watch_drift_min_labels):
            return f"drift: max PSI {psi:.3f} >= {self.s.watch_drift_psi} for {now - self.drift_since:.0f} s, {new} new labels"
        if self.s.watch_every_s and now - self.last_retrain >= self.s.watch_every_s:
            return f"schedule: {now - self.last_retrain:.0f} s since the last retrain"
        return None

    def step(self) -> dict[str, Any] | None:
        """One check: judge a candidate in shadow, else retrain when a rule holds; returns what happened."""
        cand = candidate(self.r, self.keys)
        if cand.get("state") == "shadowing":
            self._ensure_shadow(cand["version"])
            d = self.judge.step()
            if d is None:
                return None
            self._stop_shadow()
            # The rule starts over: labels and drift are counted afresh for the model now serving.
            self.labels_at, self.drift_since = self.labelled(), None
            self.r.hset(self.keys.loop, "labels_at_retrain", self.labels_at)
            return {"decision": d.to_dict(), "version": cand["version"]}
        self._stop_shadow()
        now = time.time()
        why = self.due(now)
        if why is None:
            return None
        return self.retrain(why, now)

    def retrain(self, why: str, now: float) -> dict[str, Any]:
        """Retrain now (``why`` says which rule) and propose the result; a failure leaves serving alone."""
        labels = self.labelled()
        self.last_retrain, self.labels_at = now, labels
        self.r.hset(self.keys.loop, mapping={"last_retrain": repr(now), "labels_at_retrain": labels, "reason": why})
        ptr = registry.read_pointer(self.r, self.keys)
        entry = registry.get_entry(self.r, self.keys, ptr.version) if ptr else None
        if entry is None:
            log.error("retrain_failed", reason=why, error="no serving model in the registry")
            return {"retrain_failed": "no serving model"}
        log.info("retrain_due", reason=why, serving=entry.version)
        try:
            summary = retrain(self.r, self.keys, self.s, self.opts, self.tcfg, list(entry.classes),
                              drift=why.startswith("drift"))
        except (RetrainError, registry.RegistryError, ValueError, RuntimeError) as e:
            self.r.hincrby(self.keys.loop, "retrain_failed", 1)
            log.error("retrain_failed", reason=why, error=str(e))
            return {"retrain_failed": str(e)}
        propose(self.r, self.keys, summary["version"], reason=why, serving=entry.version,
                live_windows=summary["live_windows"], train_seconds=summary["seconds"])
        self.r.hset(self.keys.loop, mapping={"last_candidate": summary["version"], "last_summary": json.dumps(summary)})
        return {"retrained": summary, "reason": why}

    def _ensure_shadow(self, version: str) -> None:
        if self.shadow_env is None or self.s.shadow_replicas == 0 or (self.shadow and self.shadow.poll() is None):
            return
        exe = shutil.which("bigru-worker")
        cmd = [exe] if exe else [sys.executable, "-m", "worker.cli"]
        cmd += ["--shadow-version", version, "--replicas", str(self.s.shadow_replicas)]
        self.shadow = subprocess.Popen(cmd, env={**os.environ, **self.shadow_env})
        log.info("shadow_started", version=version, replicas=self.s.shadow_replicas, pid=self.shadow.pid)

    def _stop_shadow(self) -> None:
        if self.shadow is None:
            return
        self.shadow.terminate()
        try:
            self.shadow.wait(30)
        except subprocess.TimeoutExpired:
            self.shadow.kill()
            self.shadow.wait()
        log.info("shadow_stopped", pid=self.shadow.pid)
        self.shadow = None

    def run(self, stop_after_s: float | None = None) -> None:
        """Loop over :meth:`step` every ``watch_poll_s`` (until ``stop_after_s``, or forever)."""
        t0 = time.monotonic()
        try:
            while stop_after_s is None or time.monotonic() - t0 < stop_after_s:
                self.step()
                time.sleep(self.s.watch_poll_s)
        finally:
            self._stop_shadow()


def main(argv: list[str]) -> int:
    """``bigru-train watch`` (loop settings ``BIGRU_*`` of :class:`LoopSettings`, trainer settings ``BIGRU_TRAIN_*``)."""
    p = argparse.ArgumentParser(prog="bigru-train watch", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, help="stop after this long (default: run until interrupted)")
    p.add_argument("--no-shadow", action="store_true", help="start no shadow replicas (an operator runs them)")
    args = p.parse_args(argv)
    from protocol.logs import configure
    from training.settings import TrainSettings, configs

    configure()
    s = cli_settings("bigru-train watch", LoopSettings, argparse.Namespace())
    if s is None:
        return 2
    try:
        ts = TrainSettings()
        model, tcfg = configs(ts)
    except ValueError as e:
        print(f"bigru-train watch: invalid trainer configuration: {e}", file=sys.stderr)
        return 2
    opts = RunOptions(**ts.group("data"), plots=False, model=model)
    Watcher(s.connect(), s, opts, tcfg, None if args.no_shadow else {}).run(args.seconds)  # type: ignore[arg-type]
    return 0


def candidate_main(argv: list[str]) -> int:
    """``bigru-train candidate [show|veto|force]``: the loop's candidate, and a human's say over it."""
    p = argparse.ArgumentParser(prog="bigru-train candidate")
    p.add_argument("action", nargs="?", default="show", choices=("show", "veto", "force"))
    p.add_argument("--by", default=os.environ.get("USER", ""), help="who decides (stored with the override)")
    args = p.parse_args(argv)
    s = cli_settings("bigru-train candidate", LoopSettings, argparse.Namespace())
    if s is None:
        return 2
    r = s.connect()
    try:
        doc = candidate(r, s.keys) if args.action == "show" else override(r, s.keys, args.action, args.by)
    except registry.RegistryError as e:
        print(f"bigru-train candidate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(doc))
    return 0
