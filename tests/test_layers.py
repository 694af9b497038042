"""Layer boundaries: the pure layers import and work with torch blocked."""

from __future__ import annotations

import subprocess
import sys

PURE = ["ir", "blocks", "generators", "search", "sim", "planner", "visual", "cli.main", "cli.plan"]


def test_pure_layers_import_without_torch() -> None:
    """Every pure package imports, and a schedule generates and simulates, with torch blocked."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        + "".join(f"import pipeblocks.{m}\n" for m in PURE)
        + "import pipeblocks as pb\n"
        "s = pb.generate('1f1b', 4, 8); pb.validate(s); assert pb.simulate(s).makespan == 33\n"
        "import importlib, pkgutil, pipeblocks.generators as g\n"
        "[importlib.import_module('pipeblocks.generators.' + i.name) for i in pkgutil.iter_modules(g.__path__)]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_torch_is_imported_only_by_runtime_and_models() -> None:
    """No module outside runtime/ and models/ imports torch at module level."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "pipeblocks"
    pattern = re.compile(r"^\s*(import torch|from torch)", re.M)
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.relative_to(root).parts[0] not in ("runtime", "models")
        and pattern.search(p.read_text())
    ]
    assert offenders == []
