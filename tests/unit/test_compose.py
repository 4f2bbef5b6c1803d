"""docker-compose.yml and the Dockerfile: valid compose, real entry points, settings and packages.

Each check reads the files the way Docker would and compares them with the code: the entry points
and settings classes the services use, and the packages ``pip install .`` builds.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomllib
import yaml
from pydantic_settings import BaseSettings

from producer.config import ProducerSettings
from training.loop_settings import LoopSettings
from training.registry_cli import RegistrySettings
from training.settings import TrainSettings
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]

#: The settings each entry point reads from the environment (everything else is ignored by it).
SETTINGS: dict[str, list[type[BaseSettings]]] = {
    "bigru-worker": [WorkerSettings],
    "bigru-producer": [ProducerSettings],
    "bigru-train": [TrainSettings, RegistrySettings, LoopSettings],  # RegistrySettings: --publish and the registry
    # commands; LoopSettings: `record` and `watch` (docs/lifecycle.md#the-loop)
}


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _app_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository (not third-party images)."""
    return {name: svc for name, svc in _compose()["services"].items() if "build" in svc}


def _env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {(prefix + name).upper() for name in cls.model_fields}


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions ``(KEYWORD, arguments)``, a stage built ``FROM`` another
    starting with that one's; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.I)
            assert m, f"every stage is named: FROM {args}"
            current = list(stages.get(m.group(1), []))
            stages[m.group(2)] = current
        else:
            current.append((keyword.upper(), args.strip()))
    return stages


def test_compose_file_validates_against_compose_spec() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    out = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_service_command_is_a_real_entry_point() -> None:
    scripts = _pyproject()["project"]["scripts"]
    for name, svc in _app_services().items():
        cmd = svc["command"]
        assert cmd[0] in scripts, f"service {name} runs {cmd[0]!r}, not an entry point"
        module, func = scripts[cmd[0]].split(":")
        mod = __import__(module, fromlist=[func])
        parser = mod.build_parser()
        if cmd[0] == "bigru-train" and len(cmd) > 1 and cmd[1] in mod.COMMANDS and cmd[1] != "train":
            assert cmd[2:] == [], f"service {name}: {cmd[1]} takes its settings from the environment"
        else:
            parser.parse_args(cmd[1:])  # raises SystemExit on unknown flags
        hc = svc.get("healthcheck", {}).get("test")
        if hc and hc[0] == "CMD" and hc[1] in scripts:
            parser.parse_args(hc[2:])


def test_worker_healthcheck_is_the_readiness_check() -> None:
    """``bigru-worker --check`` exits 1 until every replica has a fresh heartbeat (tests/integration/test_health_status.py)."""
    from worker.cli import build_parser

    hc = _compose()["services"]["worker"]["healthcheck"]["test"]
    assert hc == ["CMD", "bigru-worker", "--check"]
    assert build_parser().parse_args(hc[2:]).check is True


def test_service_environment_names_settings_the_service_reads() -> None:
    """A misspelt or misplaced ``BIGRU_*`` variable is silently ignored (``extra="ignore"``): refuse it here."""
    for name, svc in _app_services().items():
        entry = svc["command"][0]
        known = set().union(*(_env_names(cls) for cls in SETTINGS[entry]))
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"service {name}: write environment as a map"
        unknown = sorted(k for k in env if k.startswith("BIGRU_") and k not in known)
        assert not unknown, f"service {name} ({entry}) sets {unknown}, which none of {[c.__name__ for c in SETTINGS[entry]]} reads"


def test_compose_build_targets_are_dockerfile_stages() -> None:
    stages = _dockerfile_stages()
    for name, svc in _app_services().items():
        assert svc["build"]["target"] in stages, f"service {name} builds missing target {svc['build']['target']!r}"
    assert {"cpu", "cuda"} <= set(stages)


def test_every_target_copies_the_packages_before_installing_them() -> None:
    """``pip install .`` in each target finds pyproject.toml, the readme it names and every package."""
    project = _pyproject()
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages == {"protocol", "worker", "producer", "training"}
    for pkg in packages:
        assert (ROOT / pkg / "__init__.py").is_file(), pkg
    entry_packages = {target.split(".")[0] for target in project["project"]["scripts"].values()}
    assert entry_packages <= packages
    needed = packages | {"pyproject.toml", project["project"]["readme"]}
    for stage, instructions in _dockerfile_stages().items():
        copied: set[str] = set()
        installs = 0
        for keyword, args in instructions:
            if keyword == "COPY":
                copied |= {Path(src).as_posix() for src in args.split()[:-1] if not src.startswith("--")}
            elif keyword == "RUN" and re.search(r"pip install [^&]*[\"' ]\.(\[[^\]]*\])?[\"']?(\s|$)", args):
                installs += 1
                assert needed <= copied, f"stage {stage}: pip install . before COPY of {sorted(needed - copied)}"
        if stage in ("cpu", "cuda"):
            assert installs == 1, f"stage {stage} should install the project once, found {installs}"


def test_worker_and_producer_images_install_no_torch() -> None:
    """The serving images install the `serve` extra (no torch); only the trainer's image has torch."""
    stages = _dockerfile_stages()
    services = _compose()["services"]
    extras = _pyproject()["project"]["optional-dependencies"]
    assert not any("torch" in dep for dep in extras["serve"])
    for name in ("worker", "producer"):
        target = services[name]["build"]["target"]
        installs = " ".join(args for kw, args in stages[target] if kw == "RUN" and "pip install" in args)
        assert "torch" not in installs and ".[serve]" in installs, (name, target, installs)
    trainer = " ".join(args for kw, args in stages[services["trainer"]["build"]["target"]] if kw == "RUN")
    assert "torch" in trainer
