"""docs/planner.md's predicted-against-published tables are what docs/make_planner_table.py
makes from runs of the planner: the first rows are recomputed here."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_planner_table",
                                                  ROOT / "docs" / "make_planner_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_planner_table"] = mod
    spec.loader.exec_module(mod)
    return mod


def _block(name: str) -> list[str]:
    text = (ROOT / "docs" / "planner.md").read_text()
    found = re.findall(rf"<!-- planner-{name}: begin -->\n(.*?)<!-- planner-{name}: end -->",
                       text, re.S)
    assert len(found) == 1, f"docs/planner.md needs one planner-{name} block"
    return found[0].strip().splitlines()


@pytest.mark.parametrize("name,count", [("korthikanti", 1), ("narayanan", 1),
                                        ("zero-bubble", 1)])
def test_the_page_shows_what_the_planner_predicts(name: str, count: int) -> None:
    """The header and the first rows of each table, recomputed, are on the page verbatim."""
    mod = _script()
    made = mod.BLOCKS[name](mod.bench(), count).splitlines()
    page = _block(name)
    assert page[: len(made)] == made


def test_every_published_figure_is_on_the_page_with_its_error() -> None:
    """Each published figure of the benchmark appears in its table, with an error column."""
    bench = _script().bench()
    rows = _block("korthikanti")[2:] + _block("narayanan")[2:]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows if r.startswith("|")]
    published = [f"{r[-1]}%" for r in bench.KORTHIKANTI] + [str(r[-1]) for r in bench.NARAYANAN]
    assert [c[2] for c in cells] == published
    assert all(re.fullmatch(r"[+-]\d+\.\d%", c[4]) for c in cells)
    assert _block("forty-gpus")[0].startswith("| schedule |")
