"""Shared basics of the device check: the run's sizes, a step's context and outcome, subprocess helpers, wheels.

Imports only the standard library at module level: ``scripts.device.check`` imports it to pick the
wheels to install, before the project's dependencies are importable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU plan or the tiny CPU dry-run plan."""

    dry: bool
    device: str
    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    min_s: float
    onnx_batches: tuple[int, ...]
    pipeline_windows: int
    pipeline_max_batch: int
    train_epochs: int | None  # None: bigru-train's defaults
    budget_s: float

    @classmethod
    def make(cls, dry: bool) -> Plan:
        """The plan for a dry (CPU, tiny) or a real (CUDA) run; env vars override a few sizes."""
        env = os.environ
        if dry:
            plan = cls(True, "cpu", (1, 64), (20,), 0.05, (1, 64), 2000, 256, 2, 240.0)
        else:
            plan = cls(False, "cuda", (1, 64, 256, 1024, 4096), (20, 150), 0.25, (1, 64, 256, 1024),
                       200_000, 1024, None, 440.0)
        return cls(
            plan.dry, plan.device, plan.batches, plan.lengths, plan.min_s, plan.onnx_batches,
            int(env.get("DEVICE_CHECK_PIPELINE_WINDOWS", plan.pipeline_windows)),
            int(env.get("DEVICE_CHECK_PIPELINE_MAX_BATCH", plan.pipeline_max_batch)),
            plan.train_epochs, float(env.get("DEVICE_CHECK_BUDGET_S", plan.budget_s)) * time_scale(),
        )


def time_scale() -> float:
    """DEVICE_CHECK_TIME_SCALE multiplies every time limit (a slow or busy machine; default 1)."""
    return max(0.1, float(os.environ.get("DEVICE_CHECK_TIME_SCALE", "1")))


def want_dry() -> bool:
    """Dry run when asked (DEVICE_CHECK_DRY=1) or when torch sees no CUDA device."""
    if os.environ.get("DEVICE_CHECK_DRY", "").strip().lower() in ("1", "true", "yes"):
        return True
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:
        return True


# ----------------------------------------------------------------------------------------- wheels


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:4])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheels_to_install(wheel_dir: Path, installed: Callable[[str], str | None] | None = None) -> list[Path]:
    """The wheels in ``wheel_dir`` whose distribution is missing or older than the wheel.

    ``pydantic-core`` must match ``pydantic``: when one of the two is installed, both are.
    """
    if installed is None:
        from importlib import metadata

        def installed(name: str) -> str | None:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                return None

    picked: dict[str, Path] = {}
    wheels = {}
    for whl in sorted(wheel_dir.glob("*.whl")):
        parts = whl.name[:-4].split("-")  # name-version[-build]-python-abi-platform
        if len(parts) < 5:
            continue
        name, version = _norm(parts[0]), parts[1]
        wheels[name] = whl
        have = installed(name)
        if have is None or _version_key(have) < _version_key(version):
            picked[name] = whl
    for a, b in (("pydantic", "pydantic_core"), ("pydantic_core", "pydantic")):
        if a in picked and b in wheels:
            picked[b] = wheels[b]
    return sorted(picked.values())


def extract_wheels(wheels: list[Path], target: Path) -> None:
    """Unzip wheels into ``target`` (the fallback when pip is unusable; enough for these wheels)."""
    import zipfile

    target.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            z.extractall(target)


# ---------------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    """A progress line on stderr (which goes to steps.log inside a step)."""
    print(f"[device-check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_cmd(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; kill the whole group on timeout."""
    p = subprocess.Popen(cmd, text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        _kill_group(p)
        out, err = p.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _kill_group(p: subprocess.Popen[Any]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def child_env() -> dict[str, str]:
    """The environment for the project's commands: repo on PYTHONPATH, quiet logs, tmp matplotlib dir."""
    env = dict(os.environ)
    pp = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in pp:
        pp.append(str(ROOT))
    env.update(PYTHONPATH=os.pathsep.join(pp), MPLCONFIGDIR=tempfile.gettempdir(), BIGRU_LOG_JSON="true")
    return env


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


# ------------------------------------------------------------------------- steps: context, outcome


@dataclass
class Ctx:
    """What a step gets: the plan, the output folder and its own deadline (monotonic clock)."""

    plan: Plan
    out: Path
    deadline: float

    def left(self) -> float:
        """Seconds left before the step is killed."""
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Step:
    """A named step, its time limit (seconds) on the GPU plan and on the dry plan."""

    name: str
    fn: Callable[[Ctx], dict[str, Any]]
    timeout: float
    dry_timeout: float
    optional: bool = False  # run only when its whole timeout still fits the budget
    gpu_only: bool = False  # skipped in a dry run


class StepFailed(RuntimeError):
    """A step ran but failed; ``partial`` keeps what it measured."""

    def __init__(self, msg: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.partial = partial or {}


class StepSkipped(RuntimeError):
    """A step cannot run here (recorded as skipped, not failed)."""
