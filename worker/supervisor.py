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
    r = settings.connect()
    source = open_source(settings, r, consumer, observer=metrics)  # loads and warms up the model
    install_sighup(source)
    # Everything loaded so far (onnxruntime or torch, the model) lives as long as the process: move it
    # out of the collector's reach, or each full collection walks ~200 000 objects (~80 ms, a pause
    # every window in flight would wait out).
    gc.collect()
    gc.freeze()
    model = source.current
    loop = WorkerLoop(r, settings, consumer, source, stop=stop, observer=metrics)
    # Ready only now that the model is loaded and warmed up: the first heartbeat (what
    # `bigru-worker --check` looks for) and bigru_ready=1 are written after the warm-up pass.
    try:
        loop.heartbeat(force=True)
    except TRANSIENT as err:  # the loop keeps trying once it runs
        log.warning("first_heartbeat_failed", error=str(err))
    metrics.model_version(model.version)
    log.info("replica_ready", redis=settings.redis_url_redacted, model=model.version,
             device=str(getattr(model, "device", settings.device)), backend=getattr(model, "backend", "torch"),
             precision=getattr(model, "precision", "fp32"))
    try:
        loop.run()
    finally:
        getattr(source, "close", lambda: None)()
    return 0


def _child(settings: WorkerSettings, index: int) -> None:
    raise SystemExit(run_replica(settings, index, supervised=True))


def supervise(settings: WorkerSettings) -> int:
    """Run ``settings.replicas`` child processes, restarting any that die unexpectedly."""
    configure(settings.log_level, settings.log_json)
    log = structlog.get_logger("supervisor")
    ctx = mp.get_context("spawn")
    stopping = threading.Event()
    signals = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        stopping.set()
        for p in procs.values():
            if p.is_alive() and p.pid:
                try:
                    os.kill(p.pid, signal.SIGTERM if signals == 1 else signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if signals > 1:
            os._exit(128 + signum)

    procs: dict[int, mp.process.BaseProcess] = {}

    def start(i: int) -> None:
        p = ctx.Process(target=_child, args=(settings, i), name=f"replica-{i}")
        p.start()
        procs[i] = p
        log.info("replica_started", replica=i, pid=p.pid)

    def hangup(signum: int, frame: FrameType | None) -> None:
        for p in procs.values():  # each replica checks for a new model version
            if p.is_alive() and p.pid:
                try:
                    os.kill(p.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, hangup)
    for i in range(settings.replicas):
        start(i)
    exit_code = 0
    while procs:
        time.sleep(0.2)
        for i, p in list(procs.items()):
            if p.is_alive():
                continue
            p.join()
            del procs[i]
            if p.exitcode != 0:
                exit_code = 1
            if p.exitcode != 0 and not stopping.is_set():
                log.error("replica_died", replica=i, exitcode=p.exitcode)
                time.sleep(0.5)
                start(i)
            else:
                log.info("replica_exited", replica=i, exitcode=p.exitcode)
    return exit_code if not stopping.is_set() else 0
