"""Each ``BIGRU_*`` variable is declared exactly once: one settings field (the class that first
annotates it; subclasses inherit it) or one environment read outside the settings classes."""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

from pydantic import BaseModel
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
#: Where declarations may live (tests read variables of their own, e.g. BIGRU_REPORT_DIR, and are not counted).
SOURCES = ("protocol", "worker", "producer", "training", "bench", "scripts")
#: The modules that define settings classes (imported so that every class is seen).
SETTINGS_MODULES = ("protocol.redisconn", "protocol.settings", "worker.config", "producer.config",
                    "training.cli", "training.registry_cli")


def settings_classes() -> list[type[BaseSettings]]:
    """Every project subclass of ``BaseSettings``."""
    for m in SETTINGS_MODULES:
        importlib.import_module(m)
    out: list[type[BaseSettings]] = []
    todo = list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.split(".")[0] in SOURCES and cls not in out:
            out.append(cls)
    return out


def groups_of(cls: type[BaseSettings]) -> list[type[BaseModel]]:
    """The plain pydantic models (not settings classes) ``cls`` joins: its groups of fields (``worker.config``)."""
    return [b for b in cls.__mro__[1:] if issubclass(b, BaseModel) and not issubclass(b, BaseSettings)
            and b is not BaseModel]


def field_declarations(classes: list[type[BaseSettings]]) -> list[tuple[str, str]]:
    """(variable, class) for each field a class annotates itself, or a group it joins (each group counted once,
    with the variable prefix of the first settings class that joins it)."""
    out = []
    counted: set[type[BaseModel]] = set()
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for owner in [cls, *groups_of(cls)]:
            if owner in counted:
                continue
            counted.add(owner)
            for name in owner.__dict__.get("__annotations__", {}):
                if name in cls.model_fields:
                    out.append(((prefix + name).upper(), f"{owner.__module__}.{owner.__qualname__}"))
    return out


def env_reads(path: Path) -> list[str]:
    """``BIGRU_*`` names read from the environment in a file (``os.environ.get``/``[]``, ``os.getenv``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            f = node.func
            if (f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "environ") or f.attr == "getenv":
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "environ":
            if isinstance(node.ctx, ast.Load):
                key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith("BIGRU_"):
            found.append(key.value)
    return found


def declarations() -> Counter[str]:
    """How many times each variable is declared, fields and environment reads together."""
    count: Counter[str] = Counter(var for var, _ in field_declarations(settings_classes()))
    for pkg in SOURCES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            count.update(env_reads(f))
    return count


def env_prefixes() -> list[str]:
    """The classes that set ``env_prefix`` in their own ``model_config`` (not inherited)."""
    out = []
    for cls in settings_classes():
        own = cls.__dict__.get("model_config", {})
        parents = [b.__dict__.get("model_config", {}) for b in cls.__mro__[1:]]
        inherited = next((p.get("env_prefix") for p in parents if "env_prefix" in p), None)
        if "env_prefix" in own and own["env_prefix"] != inherited:
            out.append(f"{cls.__qualname__}={own['env_prefix']}")
    return out


def test_every_bigru_variable_is_declared_exactly_once() -> None:
    count = declarations()
    listed = sorted(count)
    assert {"BIGRU_PREFIX", "BIGRU_GROUP", "BIGRU_SHARDS", "BIGRU_REDIS_URL", "BIGRU_MAX_BATCH", "BIGRU_MAX_LAG",
            "BIGRU_DATASETS", "BIGRU_TRAIN_DATA"} <= set(listed), listed
    assert {var: n for var, n in count.items() if n != 1} == {}


def test_each_env_prefix_is_declared_once() -> None:
    """``BIGRU_`` in ``RedisConnSettings`` (every role's settings inherit it); the trainer's own ``BIGRU_TRAIN_``."""
    assert sorted(env_prefixes()) == ["RedisConnSettings=BIGRU_", "TrainSettings=BIGRU_TRAIN_"]


def test_the_count_catches_a_second_declaration(tmp_path: Path) -> None:
    from pydantic import Field

    from worker.config import WorkerSettings

    class Again(WorkerSettings):
        group: str = Field("x", description="the group, declared again")

    decl = field_declarations([*settings_classes(), Again])
    assert sorted(cls for var, cls in decl if var == "BIGRU_GROUP") == sorted([
        "protocol.settings.StreamSettings", f"{__name__}.{Again.__qualname__}"])
    script = tmp_path / "x.py"
    script.write_text('import os\nos.environ.get("BIGRU_PREFIX")\nos.environ["BIGRU_GROUP"]\nos.getenv("BIGRU_X", "")\n')
    assert env_reads(script) == ["BIGRU_PREFIX", "BIGRU_GROUP", "BIGRU_X"]
