"""One source for each setting: the settings classes' fields.

The configuration tables (docs/configuration.md, linked from the README) are what ``scripts/config_table.py``
renders from them; every
``bigru-worker`` / ``bigru-producer`` flag sets a field (or is a declared command option), defaults to
None so the environment and ``.env`` apply, and matches the field's type and description; the bench
derives its worker environment from ``WorkerSettings``. Each check is also run on a broken input to
show that it can fail.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from bench.pipeline import BenchError, WorkerConfig, worker_env
from producer import cli as producer_cli
from producer.config import ProducerSettings
from protocol.redisconn import RedisConnSettings
from scripts import config_table
from scripts.config_table import ROLES, ConfigDocError, Role, current_block, render, rows
from worker import cli as worker_cli
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]

CLIS = [
    pytest.param(worker_cli.build_parser, WorkerSettings, worker_cli.COMMAND_OPTIONS, id="bigru-worker"),
    pytest.param(producer_cli.build_parser, ProducerSettings, producer_cli.COMMAND_OPTIONS, id="bigru-producer"),
]


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``BIGRU_*`` variables and no ``.env``: settings built now take flags and defaults only."""
    for k in list(os.environ):
        if k.startswith("BIGRU_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


# --- the README block ---------------------------------------------------------------------------


def test_readme_block_is_the_rendered_one() -> None:
    """`make config-table` has been run since the last settings change (the tables live in docs/configuration.md)."""
    assert current_block((ROOT / "docs" / "configuration.md").read_text()) == render(), "run `make config-table`"
    assert "(docs/configuration.md)" in (ROOT / "README.md").read_text()


def test_a_new_setting_makes_the_readme_block_stale() -> None:
    class Extra(WorkerSettings):
        new_knob: int = Field(3, ge=1, description="a knob added without regenerating the README")

    roles = [Role("worker", Extra, ROLES[0].parsers), *ROLES[1:]]
    block = render(roles)
    assert "| `BIGRU_NEW_KNOB` | — | `3` | a knob added without regenerating the README |" in block
    assert block != current_block((ROOT / "docs" / "configuration.md").read_text())


def test_check_mode_fails_on_a_stale_readme_and_the_rewrite_fixes_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{config_table.BEGIN}\n| old |\n{config_table.END}\n\n## next\n")
    assert config_table.main(["--readme", str(readme), "--check"]) == 1
    assert config_table.main(["--readme", str(readme)]) == 0
    assert config_table.main(["--readme", str(readme), "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n") and text.endswith(f"{config_table.END}\n\n## next\n")
    with pytest.raises(ConfigDocError):
        config_table.replace_block("no markers here", "block")


def test_make_target_runs_the_renderer() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nconfig-table:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/config_table.py" in target


# --- the settings classes -----------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_setting_has_a_description(role: Role) -> None:
    assert [n for n, f in role.settings.model_fields.items() if not f.description] == []


def test_a_setting_without_description_stops_the_rendering() -> None:
    class Bare(WorkerSettings):
        bare: int = 1

    with pytest.raises(ConfigDocError, match="Bare.bare has no description"):
        rows([Role("worker", Bare, ())])


def test_roles_sharing_a_setting_must_agree_on_it() -> None:
    class Drifted(ProducerSettings):
        prefix: str = Field("other", min_length=1, description=ProducerSettings.model_fields["prefix"].description)

    with pytest.raises(ConfigDocError, match="prefix: producer and worker differ in default"):
        rows([ROLES[0], Role("producer", Drifted, ())])
    shared = {r.name: r.roles for r in rows() if len(r.roles) > 1 and r.name not in RedisConnSettings.model_fields}
    assert shared == {"prefix": ("worker", "producer", "registry", "loop"), "group": ("worker", "producer", "loop"),
                      "shards": ("worker", "producer", "loop")}


def test_every_row_is_in_exactly_one_table() -> None:
    block = render()
    for row in rows():
        assert block.count(f"| `{row.env}` |") == 1, row.env


# --- the flags ----------------------------------------------------------------------------------


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out: list[argparse.Action] = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out += _actions(sub)
        if not isinstance(a, argparse._HelpAction):
            out.append(a)
    return out


def _field_kind(settings: type[BaseSettings], name: str) -> Any:
    """The field's type without ``None``."""
    ann = settings.model_fields[name].annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        (ann,) = [a for a in typing.get_args(ann) if a is not type(None)]
    return ann


def flag_problems(parser: argparse.ArgumentParser, settings: type[BaseSettings], commands: frozenset[str]) -> list[str]:
    """What is wrong with ``parser``'s flags as setters of ``settings`` (empty: nothing)."""
    problems: list[str] = []
    actions = _actions(parser)
    problems += [f"{n}: command option is also a setting" for n in sorted(commands & set(settings.model_fields))]
    problems += [f"{n}: declared command option is no flag" for n in sorted(commands - {a.dest for a in actions})]
    for a in actions:
        if a.dest in commands:
            continue
        if a.dest not in settings.model_fields:
            problems.append(f"{a.dest}: neither a {settings.__name__} field nor a command option")
            continue
        if a.default is not None:
            problems.append(f"{a.dest}: default {a.default!r} would hide the environment")
        kind, const = _field_kind(settings, a.dest), type(a) is argparse._StoreConstAction  # e.g. --block
        if typing.get_origin(kind) is Literal:
            given = {a.const} if const else set(a.choices or ())
            if not given or not given <= set(typing.get_args(kind)):
                problems.append(f"{a.dest}: values {sorted(given)} are not the field's {typing.get_args(kind)}")
        elif kind is bool:
            if not isinstance(a, argparse.BooleanOptionalAction):
                problems.append(f"{a.dest}: a bool setting wants --x/--no-x")
        elif kind in (int, float) and a.type is not kind:
            problems.append(f"{a.dest}: type {a.type} for a {kind.__name__} field")
        description = (settings.model_fields[a.dest].description or "").replace("%", "%%")
        if not const and a.help != description:
            problems.append(f"{a.dest}: help is not the field's description")
    return problems


@pytest.mark.parametrize(("build", "settings", "commands"), CLIS)
def test_every_flag_sets_a_setting_and_defaults_to_none(
    build: Any, settings: type[BaseSettings], commands: frozenset[str]
) -> None:
    assert flag_problems(build(), settings, commands) == []


def test_the_flag_check_catches_bad_flags() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bogus")
    p.add_argument("--max-batch", type=int, default=5, help=WorkerSettings.model_fields["max_batch"].description)
    p.add_argument("--shards", type=float, help=WorkerSettings.model_fields["shards"].description)
    p.add_argument("--device", choices=["cpu", "tpu"], help=WorkerSettings.model_fields["device"].description)
    p.add_argument("--burst", action="store_true", default=None, help="hand-written")
    p.add_argument("--json", action="store_true")
    assert flag_problems(p, WorkerSettings, frozenset({"json", "watch", "shards"})) == [
        "shards: command option is also a setting",
        "watch: declared command option is no flag",
        "bogus: neither a WorkerSettings field nor a command option",
        "max_batch: default 5 would hide the environment",
        "device: values ['cpu', 'tpu'] are not the field's ('cpu', 'cuda', 'auto')",
        "burst: a bool setting wants --x/--no-x",
        "burst: help is not the field's description",
    ]


def test_flags_reach_the_settings(no_env: None) -> None:
    w = worker_cli.settings_from_args(worker_cli.build_parser().parse_args(
        ["--max-batch", "7", "--no-overlap", "--burst", "--device", "auto", "--redis-url", "redis://h:1/0"]))
    assert (w.max_batch, w.overlap, w.burst, w.device, w.redis_url) == (7, False, True, "auto", "redis://h:1/0")
    assert worker_cli.settings_from_args(worker_cli.build_parser().parse_args([])) == WorkerSettings()
    p = producer_cli.settings_from_args(producer_cli.build_parser().parse_args(
        ["--prefix", "px", "--shards", "3", "publish", "--max-lag", "9", "--block", "--per-entry", "4"]))
    assert (p.prefix, p.shards, p.max_lag, p.backpressure) == ("px", 3, 9, "block")


def test_unset_flags_leave_the_environment_in_charge(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGRU_MAX_BATCH", "11")
    monkeypatch.setenv("BIGRU_MAX_LAG", "12")
    assert worker_cli.settings_from_args(worker_cli.build_parser().parse_args([])).max_batch == 11
    args = producer_cli.build_parser().parse_args(["publish"])
    assert producer_cli.settings_from_args(args).max_lag == 12


# --- the bench's worker environment ---------------------------------------------------------------


def test_bench_worker_env_names_only_settings(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    env = worker_env(WorkerConfig(threads=3, overlap=False, extra_env={"PYTHONPATH": "x", "BIGRU_DEVICE": "cpu"}),
                     redis_url="redis://h:1/0", prefix="p")
    names = {k.removeprefix("BIGRU_").lower() for k in env if k.startswith("BIGRU_")}
    assert names <= set(WorkerSettings.model_fields)
    assert (env["BIGRU_TORCH_THREADS"], env["BIGRU_OVERLAP"], env["BIGRU_PRECISION"]) == ("3", "false", "fp32")
    assert env["PYTHONPATH"] == "x" and env["BIGRU_TRIM_INPUT"] == "false"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = WorkerSettings()  # the workers read back what the bench meant
    assert (s.torch_threads, s.overlap, s.max_wait_ms, s.block_ms, s.prefix) == (3, False, 5.0, 50, "p")


def test_bench_worker_env_fails_loudly(no_env: None) -> None:
    with pytest.raises(BenchError, match="not WorkerSettings fields: renamed_setting"):
        worker_env(WorkerConfig(), renamed_setting=1)
    with pytest.raises(BenchError, match="extra_env names no WorkerSettings field: BIGRU_NO_SUCH"):
        worker_env(WorkerConfig(extra_env={"BIGRU_NO_SUCH": "1"}))
    with pytest.raises(BenchError, match="invalid worker settings"):
        worker_env(WorkerConfig(max_batch=0))
