"""docs/architecture.md holds: every import follows the layer rules, no module imports itself back
through others, and the producer never loads torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "worker", "producer", "training")

#: training's lower part, the folder training/model/: the model, the checkpoint format and its exporters,
#: the dataset formats.
MODEL_LAYER = {"training.model"} | {f"training.model.{f.stem}" for f in (ROOT / "training" / "model").glob("*.py")
                                    if f.stem != "__init__"}

#: Which layer a module belongs to; lower layers come first.
ORDER = ["protocol", "model", "worker", "producer", "training"]

#: The layers each layer may import (besides itself).
ALLOWED = {
    "protocol": set(),
    "model": {"protocol"},
    "worker": {"protocol", "model"},
    "producer": {"protocol", "model"},
    "training": {"protocol", "model"},
}


def layer(module: str) -> str:
    """The layer of a project module (see docs/architecture.md)."""
    if module == "training.model" or module.startswith("training.model."):
        return "model"
    return module.split(".")[0]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n.split(".")[0] in PACKAGES:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {d for d in imports(p, known) if d != m and d not in PACKAGES} for m, p in mods.items()}


def violations(g: dict[str, set[str]]) -> list[str]:
    """Imports from a layer to one it may not use."""
    return [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in sorted(g.items()) for d in sorted(deps)
            if layer(d) != layer(m) and layer(d) not in ALLOWED[layer(m)]]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_every_import_follows_the_layer_rules() -> None:
    assert violations(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_are_for() -> None:
    """On made-up graphs: a lower layer importing a higher one, a role importing another, a cycle."""
    assert violations({"protocol.wire": {"worker.loop"}}) == ["protocol.wire (protocol) imports worker.loop (worker)"]
    assert violations({"training.model.checkpoint": {"training.train"}}) != []  # the model layer below the trainer
    assert violations({"producer.cli": {"worker.config"}}) != [] and violations({"worker.gate": {"training.run"}}) != []
    assert violations({"worker.gate": {"training.model.checkpoint", "protocol.keys"}}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = graph()  # and the real graph is seen: lazy (in-function) imports count too
    assert "protocol.results" in g["producer.client"] and "training.model.checkpoint_file" in g["worker.backends"]
    assert "worker.predictor" in g["worker.backends"]  # imported inside a function
    assert "worker.supervisor" in g["worker.cli"]


def test_importing_the_producer_and_the_protocol_leaves_torch_out() -> None:
    code = ("import sys, protocol.wire, protocol.entries, protocol.results, protocol.registry, producer, producer.cli, "
            "producer.client, producer.results, producer.sources, producer.backpressure; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def test_architecture_doc_names_every_package_and_rule() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for pkg in PACKAGES:
        assert f"`{pkg}/`" in doc
    for m in sorted(MODEL_LAYER):
        assert f"`{m}`" in doc, m


# --- issue 20: floors, private names, probes, the outer folders, the doc's names ------------------------------

#: Where code outside the layers lives, and what each folder may import of the others (besides the layers).
OUTER = {"bench": set(), "scripts": {"bench"}, "tests": {"bench", "scripts"}}


def floors(g: dict[str, set[str]], package: str) -> dict[str, int]:
    """Each module's import floor inside ``package``: 1 + the highest floor it imports there (1: none)."""
    inside = {m: {d for d in deps if d.split(".")[0] == package} for m, deps in g.items() if m.split(".")[0] == package}
    found: dict[str, int] = {}

    def floor(m: str) -> int:
        if m not in found:
            found[m] = 1 + max((floor(d) for d in inside.get(m, ()) if d != m), default=0)
        return found[m]

    for m in inside:
        floor(m)
    return found


def test_worker_has_fewer_import_floors() -> None:
    """10 floors before issue 20 (worker.cli on top of supervisor, reload, loop, guard, stages, publisher,
    reader, gate, backends); 7 since the stages stand on worker.types. docs/architecture.md gives both."""
    n = max(floors(graph(), "worker").values())
    assert n <= 7, sorted(floors(graph(), "worker").items(), key=lambda kv: kv[1])
    assert f"10 before issue 20, {n} after" in (ROOT / "docs" / "architecture.md").read_text()
    assert floors({"worker.a": {"worker.b"}, "worker.b": {"worker.c"}, "worker.c": set()}, "worker") == {
        "worker.a": 3, "worker.b": 2, "worker.c": 1}


def _files(*folders: str) -> list[Path]:
    return [f for d in folders for f in sorted((ROOT / d).rglob("*.py")) if ".venv" not in f.parts]


def private_imports(path: Path) -> list[str]:
    """``from project.module import _name`` in a file (a module's private names stay its own)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] in (*PACKAGES, *OUTER):
            out += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_no_module_imports_another_modules_private_names(tmp_path: Path) -> None:
    assert [line for f in _files(*PACKAGES, "bench", "scripts") for line in private_imports(f)] == []
    (tmp_path / "x.py").write_text("from protocol.wire import _pack\nfrom protocol.wire import pack as _p\n")
    assert private_imports(tmp_path / "x.py") == ["x.py: from protocol.wire import _pack"]  # the check can fail


def project_members() -> set[str]:
    """Names of every method, class attribute and ``self.x`` attribute the project's own classes define."""
    names: set[str] = set()
    for f in _files(*PACKAGES):
        for cls in ast.walk(ast.parse(f.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(node.name)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                        and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
    return names


#: getattr/hasattr probes for names the project's classes also define, that look at something else: redis-py's
#: objects (connection pools, the cluster pipeline), argparse namespaces of the trainer's subcommands, a numpy
#: scalar, the signal module. Anything new here needs a reason.
PROBES_OF_OTHERS = {
    ("protocol/durability.py", "connection_pool"), ("protocol/durability.py", "connection_kwargs"),
    ("worker/publisher.py", "connection_pool"),
    ("worker/publisher.py", "host"), ("worker/publisher.py", "port"), ("bench/run.py", "item"),
    ("training/registry_cli.py", "json"), ("training/experiments/accuracy.py", "seeds"), ("training/experiments/accuracy.py", "n"),
    ("training/experiments/accuracy.py", "test_n"), ("training/experiments/accuracy.py", "merge"), ("training/experiments/accuracy.py", "no_baseline"),
    ("training/experiments/accuracy.py", "dtw_max_test"), ("training/model/quantize.py", "graph"), ("training/registry_cli.py", "redis_url"),
    ("training/registry_cli.py", "prefix"),
}


def member_probes(files: list[Path], members: set[str]) -> set[tuple[str, str]]:
    """(file, name) of each ``getattr(x, "name", ...)`` / ``hasattr(x, "name")`` whose name a project class defines."""
    found = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in members:
                found.add((str(f.relative_to(ROOT)), str(node.args[1].value)))
    return found


def test_no_getattr_probes_for_the_projects_own_members() -> None:
    """Interfaces are Protocols (worker.types), never probes: 8 probes stood in for Predictor/ModelSource members."""
    members = project_members()
    assert {"golden_windows", "forget_previous", "fall_back", "precision", "request_check", "close"} <= members
    assert member_probes(_files(*PACKAGES, "bench", "scripts"), members) - PROBES_OF_OTHERS == set()


def test_bench_never_imports_scripts_or_tests() -> None:
    """Outside the layers imports run one way: tests -> scripts -> bench (-> any layer)."""
    bad = []
    for folder, allowed in OUTER.items():
        for f in _files(folder):
            for node in ast.walk(ast.parse(f.read_text())):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                bad += [f"{f.relative_to(ROOT)} imports {m}" for m in mods
                        if m.split(".")[0] in OUTER and m.split(".")[0] != folder and m.split(".")[0] not in allowed]
    assert bad == []


def test_every_module_the_architecture_doc_names_exists() -> None:
    """Each dotted project name in docs/architecture.md (``worker.guard.ModelGuard.trip``) resolves."""
    import importlib

    doc = (ROOT / "docs" / "architecture.md").read_text()
    names = sorted(set(re.findall(r"`((?:protocol|worker|producer|training|bench)(?:\.\w+)+)`", doc)))
    assert len(names) > 40
    missing = []
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert missing == []
