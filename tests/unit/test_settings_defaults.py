"""Each setting's default is written once, and the environment variable names did not change (issue 27).

A part that has defaults of its own (``protocol.limits.Limits``, ``worker.publisher.Publisher``,
``worker.gate.GateRules``, ``worker.breaker.BreakerRules``, the backends, the dead-letter encoders) takes
them from the settings (``worker.config.default``) or the settings take them from it (``Limits``): the
test reads every keyword default and dataclass field in the layers and fails on a literal equal to a
worker setting's default under that setting's name (or its tail: ``max_drop`` for ``reload_max_drop``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from producer.config import ProducerSettings
from training.loop_settings import LoopSettings
from training.registry_cli import RegistrySettings
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
#: The list of main before issue 27 (``# Class`` lines, then its variables, sorted).
ENV_NAMES = ROOT / "tests" / "data" / "settings_env_names.txt"
#: Where a literal default may stand: the settings themselves, and ``Limits`` (which the settings read).
DECLARED = {"worker/config.py", "protocol/limits.py"}
#: Same name and value, another setting: ``compare``'s verdict threshold (its own ``--max-drop`` flag).
OTHERS = {("worker/compare.py", "max_drop")}


def env_names() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cls in (WorkerSettings, ProducerSettings, RegistrySettings, LoopSettings):
        prefix = str(cls.model_config.get("env_prefix", ""))
        out[cls.__name__] = sorted((prefix + name).upper() for name in cls.model_fields)
    return out


def test_environment_variable_names_are_unchanged() -> None:
    want: dict[str, list[str]] = {}
    for line in ENV_NAMES.read_text().splitlines():
        if line.startswith("# "):
            cls = want.setdefault(line[2:], [])
        elif line:
            cls.append(line)
    assert env_names() == want


def _literal(node: ast.expr | None) -> object:
    """The value of a constant expression (``64 * 1024``, ``-1``, ``True``), else a sentinel."""
    if node is None:
        return _literal
    try:
        return ast.literal_eval(node) if isinstance(node, ast.Constant | ast.UnaryOp) else \
            eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}}) \
            if isinstance(node, ast.BinOp) and all(isinstance(n, ast.Constant | ast.BinOp | ast.operator)
                                                   for n in ast.walk(node)) else _literal
    except Exception:
        return _literal


def literal_defaults(path: Path) -> list[tuple[str, object]]:
    """(name, value) of every keyword default and class-level annotated default that is a literal."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            pos = a.posonlyargs + a.args
            for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults):
                out.append((arg.arg, _literal(d)))
            for arg, kd in zip(a.kwonlyargs, a.kw_defaults):
                out.append((arg.arg, _literal(kd)))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    out.append((item.target.id, _literal(item.value)))
    return [(n, v) for n, v in out if v is not _literal]


def twice(settings: dict[str, object], files: list[Path], root: Path = ROOT) -> list[str]:
    """Literal defaults equal to the default of the setting they stand for (same name, or its tail)."""
    found = []
    for f in files:
        rel = str(f.relative_to(root))
        if rel in DECLARED:
            continue
        for name, value in literal_defaults(f):
            for field, default in settings.items():
                same = field == name or field.endswith("_" + name)
                if same and type(value) is type(default) and value == default and (rel, name) not in OTHERS:
                    found.append(f"{rel}: {name} = {value!r} (setting {field})")
    return found


def test_each_worker_default_is_written_once() -> None:
    settings: dict[str, object] = {n: f.default for n, f in WorkerSettings.model_fields.items()
                if isinstance(f.default, int | float | bool) and f.default not in (0, 1)}
    files = [f for pkg in ("protocol", "worker") for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert twice(settings, files) == []
    assert sum("64 * 1024" in f.read_text() for f in files) == 1  # the dead-letter field cap: protocol.limits


def test_the_check_finds_a_default_written_twice(tmp_path: Path) -> None:
    """Before issue 27: the publisher's reply defaults and the gate's thresholds restated the settings'."""
    f = tmp_path / "x.py"
    f.write_text("class Rules:\n    max_drop: float = 0.02\n    other: int = 5\n\n"
                 "def send(reply_maxlen: int = 10_000, *, reply_ttl_s: int = 300, cap: int = 64 * 1024) -> None: ...\n")
    assert twice({"reload_max_drop": 0.02, "reply_maxlen": 10_000, "reply_ttl_s": 300, "other": 6}, [f], tmp_path) == [
        "x.py: max_drop = 0.02 (setting reload_max_drop)", "x.py: reply_maxlen = 10000 (setting reply_maxlen)",
        "x.py: reply_ttl_s = 300 (setting reply_ttl_s)"]
    assert ("cap", 65536) in literal_defaults(f)


def test_worker_settings_come_in_groups_each_part_takes_whole() -> None:
    """Every worker setting is declared in exactly one group (in the order the tables list them), and the parts
    take their group, typed as the group."""
    import typing

    from protocol.settings import StreamSettings
    from worker import batching, config, drift, guard, liveness, maintenance, publisher, reload

    own = [n for n in WorkerSettings.model_fields if n not in StreamSettings.model_fields]
    assert [n for g in config.GROUPS for n in g.model_fields] == own
    takes = {
        batching.make_batch_wait: config.Batching, guard.breaker_rules: config.Breaking,
        reload.rules_from: config.Reloading, publisher.Publisher.from_settings: config.Publishing,
        maintenance.Maintenance.from_settings: config.Claiming, liveness.Heartbeat.from_settings: config.Liveness,
        liveness.Progress.from_settings: config.Liveness, drift.DriftMonitor.from_settings: config.Lifecycle,
    }
    for fn, group in takes.items():
        assert typing.get_type_hints(fn)["settings"] is group, fn
    assert WorkerSettings(max_length=7).limits == config.InputLimits(max_length=7).limits
