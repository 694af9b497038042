"""The import graph of pipeblocks/: no cycle, and every import points down the layer order.

The order is the one docs/design.md ("Layers") documents. Imports are read with ast, so a
function-level import counts as much as a module-level one; an import under ``if
TYPE_CHECKING:`` must point down too but cannot close a cycle (it never runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pipeblocks"

# Lowest first. A module's layer is its first name below pipeblocks; the package itself and
# its top-level entry modules (``python -m pipeblocks``) sit above everything.
LAYERS = ("errors", "checks", "ir", "blocks", "generators", "sim", "search", "visual",
          "planner", "runtime", "models", "cli", "<top>")
TOP = {"pipeblocks", "pipeblocks.__main__", "pipeblocks.train"}  # entry modules

# Upward imports that exist today, each with the change that removes it. The test fails when
# one is no longer needed, so this list can only shrink. (Empty since issue 15: train.py became
# a shim over cli/train.py and runtime/trainer.py, and runtime/ no longer imports models/.)
EXCEPTIONS: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _layer(module: str) -> str:
    if module in TOP:
        return "<top>"
    return module.split(".")[1]


def _imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, bool]]:
    """``(imported pipeblocks module, under TYPE_CHECKING)`` for every import in ``path``."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "pipeblocks":
                continue
            while name not in mods:
                name = name.rpartition(".")[0]
            if name != module:
                out.append((name, id(node) in typing_only))
    return out


def _graph() -> dict[str, list[tuple[str, bool]]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in sorted(mods.items())}


def test_every_module_has_a_layer() -> None:
    """A new top-level package must be placed in LAYERS (and in docs/design.md)."""
    unplaced = sorted(m for m in _graph() if _layer(m) not in LAYERS)
    assert unplaced == [], "add their layer to LAYERS here and to docs/design.md, Layers"


def test_imports_point_down_the_layer_order() -> None:
    """Each import stays in its layer or goes to a lower one, but for the named exceptions."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = {(m, t) for m, imports in _graph().items() for t, _ in imports
              if rank[_layer(t)] > rank[_layer(m)]}
    assert upward - EXCEPTIONS == set(), "imports up the layer order"
    assert EXCEPTIONS - upward == set(), "exceptions no longer needed: delete them"


def _cycle(graph: dict[str, list[str]]) -> list[str]:
    """One cycle of ``graph`` as a path that returns to its start, or [] if there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return []

    for m in graph:
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_import_cycle() -> None:
    """No cycle among pipeblocks modules (package __init__ files included)."""
    graph = {m: sorted({t for t, typing_only in imports if not typing_only})
             for m, imports in _graph().items()}
    assert _cycle(graph) == []


def test_the_checker_sees_what_it_must() -> None:
    """The reader resolves package, module and name imports, and the cycle check fires."""
    mods = _modules()
    imports = dict(_imports("pipeblocks.sim.engine", mods["pipeblocks.sim.engine"], mods))
    assert "pipeblocks.ir.deps" in imports and "pipeblocks.sim.tables" in imports
    assert imports.keys() <= set(mods)
    ascii_imports = _imports("pipeblocks.ir.ascii", mods["pipeblocks.ir.ascii"], mods)
    assert ("pipeblocks.ir.schedule", True) in ascii_imports  # under TYPE_CHECKING
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) in (
        ["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    assert _cycle({"a": ["b", "c"], "b": ["c"], "c": []}) == []
