"""The layering rules the README states, held by tests: the library never loads flytekit, games
import neither the policy nor the training, the shared types import nothing of the project, and no
module or subpackage of ``deltabelief`` imports itself back (lazy imports inside functions count)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "deltabelief"


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of the library (a package by its __init__)."""
    modules = {}
    for path in LIBRARY.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """The library modules ``path`` imports anywhere in its text, each resolved to the module that holds it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    resolved = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("deltabelief"):
            resolved.add(name)
    return resolved


def import_graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports."""
    known = module_files()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        graph[name] |= imported_modules(path, known) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_no_package_imports_itself_back():
    """The same at the level of deltabelief's subpackages (policy, serving, judges, ...)."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = defaultdict(set)
    for module, imported in import_graph().items():
        packages[package(module)] |= {package(m) for m in imported} - {package(module)}
    assert cycles(packages) == []


def test_shared_types_and_the_registry_import_nothing_of_the_project():
    graph = import_graph()
    assert graph.get("deltabelief.types", set()) == set()
    assert graph.get("deltabelief.registry", set()) == set()


def test_games_import_neither_policy_nor_training():
    graph = import_graph()
    games = [name for name in module_files() if name.startswith("deltabelief.games")]
    for name in games:
        direct = {t for t in graph.get(name, ()) if t.startswith(("deltabelief.policy", "deltabelief.training"))}
        assert not direct, f"{name} imports {sorted(direct)}"


LOADED = """
import importlib, json, sys
importlib.import_module("deltabelief.games")
after_games = sorted(m for m in sys.modules if m.startswith(("deltabelief.policy", "deltabelief.training")))
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps({"after_games": after_games, "flytekit": sorted(m for m in sys.modules if m.split(".")[0] == "flytekit")}))
"""


def test_importing_every_module_loads_no_flytekit_and_the_games_load_no_policy():
    """One fresh interpreter: the games alone (then no policy or training module may be loaded),
    then every module of the library (then flytekit must still be absent)."""
    names = sorted(module_files())
    out = subprocess.run([sys.executable, "-c", LOADED, json.dumps(names)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["after_games"] == []
    assert loaded["flytekit"] == []
