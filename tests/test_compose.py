"""docker-compose.yml is valid against the compose specification and names real entry points."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_validates_against_compose_spec() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    out = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_service_command_is_a_real_entry_point() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, svc in compose["services"].items():
        if "image" in svc and "build" not in svc:
            continue
        cmd = svc["command"]
        assert cmd[0] in scripts, f"service {name} runs {cmd[0]!r}, not an entry point"
        module, func = scripts[cmd[0]].split(":")
        mod = __import__(module, fromlist=[func])
        parser = mod.build_parser()
        parser.parse_args(cmd[1:])  # raises SystemExit on unknown flags
        hc = svc.get("healthcheck", {}).get("test")
        if hc and hc[0] == "CMD" and hc[1] in scripts:
            parser.parse_args(hc[2:])


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_dockerfile_has_build_targets(target: str) -> None:
    assert f"AS {target}" in (ROOT / "Dockerfile").read_text()
