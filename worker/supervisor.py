"""Running replicas: one in-process replica, or N child processes that are restarted when they die.

Signals follow rq: the first SIGTERM/SIGINT finishes and acknowledges the batch in hand, then
exits; a second one exits at once.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import threading
import time
from types import FrameType

import structlog

from protocol.logs import configure
from worker.config import WorkerSettings

#: A supervised child can get one SIGTERM twice: from a process-group kill (systemd, `kill -- -PGID`)
#: and forwarded by its supervisor. A repeat this soon after the first is that echo, not a second signal.
DUPLICATE_SIGNAL_S = 1.0


def _install_stop_handlers(stop: threading.Event, supervised: bool) -> None:
    first: list[float] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            if supervised and first and time.monotonic() - first[0] < DUPLICATE_SIGNAL_S:
                return
            os._exit(128 + signum)
        first.append(time.monotonic())
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    # A supervised child leaves Ctrl-C to its parent, which forwards one SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN if supervised else handler)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the model source takes it over (reload.install_sighup)


def run_replica(settings: WorkerSettings, index: int, supervised: bool = False) -> int:
    """Load the model and serve as replica ``index`` until stopped; returns an exit code."""
    configure(settings.log_level, settings.log_json)
    stop = threading.Event()
    _install_stop_handlers(stop, supervised)
    from protocol.redisconn import TRANSIENT
    from worker import memory
    from worker.counters import Counters
    from worker.loop import WorkerLoop
    from worker.metrics import start_metrics
    from worker.reload import install_sighup, open_source

    # torch_threads goes to the runtime that serves: onnxruntime's session, or torch's threads when the
    # torch backend is chosen (worker.backends); an ONNX replica never imports torch.
    consumer = settings.consumer_name(index)
    log = structlog.get_logger("worker").bind(consumer=consumer)
    # Metrics first, so a slow model load is visible as bigru_ready 0.
    metrics = start_metrics(settings.metrics_port, settings.metrics_addr, index, consumer,
                            settings.connect(socket_timeout=5.0) if settings.metrics_port else None, settings.keys)
    counters = Counters(metrics)  # the one way the loop, the model source and this function tell the metrics
    r = settings.connect()
    source = open_source(settings, r, consumer, counters)  # loads and warms up the model
    install_sighup(source)
    # Everything loaded so far (onnxruntime or torch, the model) lives as long as the process: move it
    # out of the collector's reach, or each full collection walks ~200 000 objects (~80 ms, a pause
    # every window in flight would wait out).
    gc.collect()
    gc.freeze()
    memory.release()  # what loading freed (e.g. the int8 build's temporaries)
    model = source.current
    loop = WorkerLoop(r, settings, consumer, source, stop=stop, counters=counters)
    # Ready only now that the model is loaded and warmed up: the first heartbeat (what
    # `bigru-worker --check` looks for) and bigru_ready=1 are written after the warm-up pass.
    try:
        loop.heartbeat(force=True)
    except TRANSIENT as err:  # the loop keeps trying once it runs
        log.warning("first_heartbeat_failed", error=str(err))
    counters.model_version(model.version)
    log.info("replica_ready", redis=settings.redis_url_redacted, model=model.version,
             device=str(model.device), backend=model.backend, precision=model.precision)
    try:
        loop.run()
    finally:
        source.close()
    return 0


def _child(settings: WorkerSettings, index: int) -> None:
    raise SystemExit(run_replica(settings, index, supervised=True))


class Supervisor:
    """Runs ``settings.replicas`` child processes and restarts any that die unexpectedly.

    The first SIGTERM/SIGINT is forwarded as SIGTERM (each replica finishes its batch), a second as
    SIGKILL; SIGHUP is forwarded so every replica checks for a new model version.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.log = structlog.get_logger("supervisor")
        self.ctx = mp.get_context("spawn")
        self.stopping = threading.Event()
        self.signals = 0
        self.procs: dict[int, mp.process.BaseProcess] = {}
        self.exit_code = 0

    def _signal_all(self, sig: int) -> None:
        for p in self.procs.values():
            if p.is_alive() and p.pid:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT handler."""
        self.signals += 1
        self.stopping.set()
        self._signal_all(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)
        if self.signals > 1:
            os._exit(128 + signum)

    def on_hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP handler: each replica checks for a new model version."""
        self._signal_all(signal.SIGHUP)

    def start(self, i: int) -> None:
        """Start replica ``i``."""
        p = self.ctx.Process(target=_child, args=(self.settings, i), name=f"replica-{i}")
        p.start()
        self.procs[i] = p
        self.log.info("replica_started", replica=i, pid=p.pid)

    def reap(self) -> None:
        """Join replicas that exited; restart those that died while not stopping."""
        for i, p in list(self.procs.items()):
            if p.is_alive():
                continue
            p.join()
            del self.procs[i]
            if p.exitcode != 0:
                self.exit_code = 1
            if p.exitcode != 0 and not self.stopping.is_set():
                self.log.error("replica_died", replica=i, exitcode=p.exitcode)
                time.sleep(0.5)
                self.start(i)
            else:
                self.log.info("replica_exited", replica=i, exitcode=p.exitcode)

    def run(self) -> int:
        """Start every replica and supervise them until all have exited; returns the exit code."""
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGHUP, self.on_hangup)
        for i in range(self.settings.replicas):
            self.start(i)
        while self.procs:
            time.sleep(0.2)
            self.reap()
        return 0 if self.stopping.is_set() else self.exit_code


def supervise(settings: WorkerSettings) -> int:
    """Run ``settings.replicas`` child processes, restarting any that die unexpectedly."""
    configure(settings.log_level, settings.log_json)
    return Supervisor(settings).run()
