"""docs/architecture.md holds: every import follows the layer rules, no module imports itself back
through others, and the producer never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "worker", "producer", "training")

#: training's lower part: the model, the checkpoint format and its exporters, the dataset formats.
MODEL_LAYER = {"training.model", "training.model_config", "training.device", "training.checkpoint",
               "training.checkpoint_file", "training.onnx", "training.quantize", "training.data", "training.formats"}

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
    if module in MODEL_LAYER:
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
    assert violations({"training.checkpoint": {"training.train"}}) != []  # the model layer below the trainer
    assert violations({"producer.cli": {"worker.config"}}) != [] and violations({"worker.gate": {"training.run"}}) != []
    assert violations({"worker.gate": {"training.checkpoint", "protocol.keys"}}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = graph()  # and the real graph is seen: lazy (in-function) imports count too
    assert "protocol.results" in g["producer.client"] and "training.checkpoint_file" in g["worker.backends"]
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
