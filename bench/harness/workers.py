"""Worker processes for measurements and tests: their environment from ``WorkerSettings``, start, stop, RSS.

:func:`settings_env` turns settings values into ``BIGRU_*`` variables after :class:`WorkerSettings`
has validated them (a misspelt name or a value the workers would refuse fails here, not silently in
the child); :func:`start_worker` runs ``python -m worker.cli`` with an environment; :func:`terminate`
stops it the way an operator does (SIGTERM: finish the batch in hand; SIGKILL after a timeout).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr, ValidationError

from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


class HarnessError(ValueError):
    """Settings for a worker that WorkerSettings refuses (or that name no setting)."""


def env_value(v: Any) -> str:
    """A settings value as an environment variable holds it."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, SecretStr):
        return v.get_secret_value()
    return str(v)


def env_name(field: str) -> str:
    """The environment variable of a ``WorkerSettings`` field (``max_batch`` -> ``BIGRU_MAX_BATCH``)."""
    return f"{WorkerSettings.model_config.get('env_prefix', '')}{field.upper()}"


def settings_env(values: Mapping[str, Any]) -> dict[str, str]:
    """``BIGRU_<FIELD>`` variables for ``values``, checked by :class:`WorkerSettings` first: a name that is
    no setting, or a value the workers would refuse, raises :class:`HarnessError` instead of being
    ignored by them."""
    unknown = sorted(set(values) - set(WorkerSettings.model_fields))
    if unknown:
        raise HarnessError(f"not WorkerSettings fields: {', '.join(unknown)}")
    try:
        s = WorkerSettings(_env_file=None, **values)
    except ValidationError as e:
        raise HarnessError(f"invalid worker settings: {e}") from e
    return {env_name(name): env_value(getattr(s, name)) for name in values}


def worker_process_env(base: Mapping[str, str] | None = None, **values: Any) -> dict[str, str]:
    """``base`` (default: this process' environment) plus ``values`` as checked ``BIGRU_*`` variables,
    with the checkout on ``PYTHONPATH`` so ``python -m worker.cli`` imports this tree."""
    import os

    env = dict(os.environ if base is None else base)
    env.update(settings_env(values))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


Output = IO[bytes] | int | None


def start_worker(env: Mapping[str, str], args: Sequence[str] = (), *, log: Output = subprocess.DEVNULL,
                 stderr: Output = subprocess.STDOUT, cwd: Path | str | None = None,
                 new_session: bool = False, cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
    """``python -m worker.cli ARGS`` with ``env``: stdout goes to ``log``, stderr with it unless given
    (``new_session``: in a process group of its own, for tests that signal the group; ``cpus``: pinned to
    these CPUs, with every thread and replica process it starts)."""
    import os

    pin = None if not cpus else (lambda: os.sched_setaffinity(0, cpus))
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env=dict(env), stdout=log,
                            stderr=log if stderr == subprocess.STDOUT else stderr, cwd=cwd,
                            start_new_session=new_session, preexec_fn=pin)


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM ``proc`` (a worker pool finishes its batches) and wait; SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def memory_kib(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/<pid>/status`` in KiB (``VmRSS`` current, ``VmHWM`` peak resident
    memory, ...): the one reader of a process's memory; empty when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("Vm"):
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0])
    return out


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    kib = memory_kib(pid).get("VmRSS")
    if kib is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return kib / 1024


def maps_torch(pid: int) -> bool:
    """True when libtorch is mapped into ``pid`` (torch was imported)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
