"""The house has no import loops: every import (module level and inside functions) of harness/, strategies/ and
hydra_plugins/ forms an acyclic graph, and strategies/ stays pure (nothing from harness/)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("harness", "strategies", "hydra_plugins")


def module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file. `from pkg import sub` counts as importing the
    submodule `pkg.sub` when that is a module, else `pkg` itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        state[v] = 2
        path.pop()
        return None

    for v in sorted(edges):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_parse_function_level_and_relative_forms(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import sibling\ndef f():\n    from pkg.sub import thing\n    import pkg.other\n")
    known = {"pkg", "pkg.m", "pkg.sibling", "pkg.sub", "pkg.other"}
    assert imports_of("pkg.m", f, known) == {"pkg.sibling", "pkg.sub", "pkg.other"}


def test_no_import_cycles():
    edges = graph()
    assert len(edges) > 30  # the scan sees the project
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_strategies_import_nothing_from_the_harness():
    edges = graph()
    leaks = {m: sorted(d for d in deps if d.startswith("harness")) for m, deps in edges.items()
             if m.startswith("strategies")}
    assert not {m: d for m, d in leaks.items() if d}
