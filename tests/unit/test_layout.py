"""The layout is the architecture: checked by reading ``cw/`` with ``ast``.

- one package per process role (``cw/master``, ``cw/worker``, ``cw/client``);
  a role imports only itself and the shared leaf modules;
- shared leaf modules (``cw/*.py`` but the entry points below) import only
  each other;
- the launchers and the CLI sit on top: nothing below them imports them;
- no import cycle anywhere, counting imports inside functions and under
  ``TYPE_CHECKING`` (they are cycles a reader follows all the same);
- no class over 300 lines, no module over 450, no function over 40;
- wire headers are read in the codec alone (``cw/protocol.py``): every other
  module reads a received message's typed record, ``Message.body``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

CW = Path(__file__).resolve().parents[2] / "cw"
ROLES = ("master", "worker", "client")
# The public face and entry points: they may import anything, nothing below imports them.
TOP = {"cw", "cw.cli", "cw.cli_launch", "cw.cli_run", "cw.mp", "cw.slurm", "cw.view", "cw.executor",
       "cw.joblib"}
MAX_CLASS, MAX_MODULE, MAX_FUNCTION = 300, 450, 40


def module_name(path: Path) -> str:
    parts = ["cw", *path.relative_to(CW).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CW.rglob("*.py"))}


def resolve(importer: str, path: Path, node: ast.ImportFrom, known: dict) -> list[str]:
    """The cw modules an ``import from`` names (``from . import shm`` names cw.shm)."""
    if node.level:
        package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        if node.module:
            base = base + node.module.split(".")
    else:
        base = (node.module or "").split(".")
    target = ".".join(base)
    if not target.startswith("cw"):
        return []
    found = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
    return found if len(found) == len(node.names) else [target, *found]


def imports(known: dict) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("cw.") or a.name == "cw")
            elif isinstance(node, ast.ImportFrom):
                edges.update(resolve(name, path, node, known))
        edges.discard(name)
    return {name: {e for e in edges if e in known} for name, edges in graph.items()}


def tier(name: str) -> str:
    if name in TOP or name.startswith("cw.launch"):
        return "top"
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROLES else "shared"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


KNOWN = modules()
GRAPH = imports(KNOWN)


def test_the_checker_sees_imports_of_every_kind():
    assert "cw.protocol" in GRAPH["cw.master.loop"]  # from ..protocol import (...)
    assert "cw.shm" in GRAPH["cw.serialize"]  # from . import shm
    assert "cw.master.loop" in GRAPH["cw.master"]  # from .loop import Master
    assert "cw.master.command" in GRAPH["cw.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_roles_import_only_themselves_and_the_shared_layer():
    wrong = [f"{a} imports {b}" for a, edges in GRAPH.items() for b in edges
             if tier(a) in ROLES and tier(b) not in (tier(a), "shared")]
    assert wrong == []


def test_the_shared_layer_imports_no_role_and_no_launcher():
    wrong = [f"{a} imports {b}" for a, edges in GRAPH.items() for b in edges
             if tier(a) == "shared" and tier(b) != "shared"]
    assert wrong == []


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_sizes(name):
    path = KNOWN[name]
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE, f"{path}: {lines} lines; split it along a seam"
    too_big = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS:
                too_big.append(f"class {node.name}: {size} lines")
            elif not isinstance(node, ast.ClassDef) and size > MAX_FUNCTION:
                too_big.append(f"def {node.name}: {size} lines")
    assert too_big == [], f"{path}: {too_big}"


def test_headers_are_read_in_the_codec_alone():
    """``x.header[...]``, ``x.header.get(...)`` or ``"f" in x.header`` outside
    cw/protocol.py: a receiver reading untyped wire values."""
    found = []
    for name, path in modules().items():
        if name == "cw.protocol":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            header = None
            if isinstance(node, ast.Subscript):
                header = node.value
            elif isinstance(node, ast.Attribute) and node.attr == "get":
                header = node.value
            elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
                header = node.comparators[0]
            if isinstance(header, ast.Attribute) and header.attr == "header":
                found.append(f"{path.relative_to(CW.parent)}:{node.lineno}")
    assert not found, "read Message.body, not its header: " + ", ".join(found)


def test_test_modules_have_names_of_their_own():
    """pytest imports test modules by basename (rootdir mode): two files of one
    name in different folders stop the whole run at collection."""
    names = [p.name for p in (CW.parent / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
