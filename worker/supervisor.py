"""Running replicas: one in-process replica, or N child processes that are restarted when they die.

Signals follow rq: the first SIGTERM/SIGINT finishes and acknowledges the batch in hand, then
exits; a second one exits at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from types import FrameType

import structlog

from worker.config import WorkerSettings
from worker.logs import configure


def _install_stop_handlers(stop: threading.Event, supervised: bool) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    # A supervised child leaves Ctrl-C to its parent, which forwards one SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN if supervised else handler)


def run_replica(settings: WorkerSettings, index: int, supervised: bool = False) -> int:
    """Load the model and serve as replica ``index`` until stopped; returns an exit code."""
    configure(settings.log_level, settings.log_json)
    stop = threading.Event()
    _install_stop_handlers(stop, supervised)
    import torch

    from training.checkpoint import load_checkpoint
    from worker.backends import make_predictor
    from worker.loop import StaticModel, WorkerLoop
    from worker.redisconn import connect, redacted

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    consumer = settings.consumer_name(index)
    log = structlog.get_logger("worker").bind(consumer=consumer)
    ckpt = load_checkpoint(settings.checkpoint)
    predictor = make_predictor(ckpt, settings.device, settings.backend, settings.torch_threads)
    r = connect(settings.redis_url)
    log.info("replica_ready", redis=redacted(settings.redis_url), model=ckpt.version,
             device=str(predictor.device), backend=predictor.backend)
    loop = WorkerLoop(r, settings, consumer, StaticModel(predictor), stop=stop)
    loop.run()
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

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
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
