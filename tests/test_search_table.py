"""docs/search.md's table "Against the exact optimum" is what docs/make_search_table.py prints:
its proven rows of the smallest case are recomputed here."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("ortools", reason="the exact solver needs OR-Tools (the 'solver' extra)")

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_search_table",
                                                  ROOT / "docs" / "make_search_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_search_table"] = mod
    spec.loader.exec_module(mod)
    return mod


def _page_rows(mod: ModuleType) -> list[str]:
    text = (ROOT / "docs" / "search.md").read_text()
    blocks = re.findall(re.escape(mod.BEGIN) + r"\n(.*?)" + re.escape(mod.END), text, re.S)
    assert len(blocks) == 1, "docs/search.md needs one exact-table block"
    lines = blocks[0].strip().splitlines()
    assert "\n".join(lines[:2]) == mod.HEAD, "the table's header is not the script's"
    return lines[2:]


def test_table_covers_the_cases() -> None:
    """p in {4, 6, 8}, m in {2p, 3p}, the three profiles, budgets up to 2 x 1F1B."""
    mod = _script()
    rows = [r.strip("|").split("|") for r in _page_rows(mod)]
    assert all(len(r) == 11 for r in rows)
    seen = {(int(r[0]), int(r[1]), r[2].strip()) for r in rows}
    want = {(p, m, prof) for p in (4, 6, 8) for m in (2 * p, 3 * p) for prof in mod.PROFILES}
    assert seen == want
    assert {float(r[3]) for r in rows} >= set(mod.BUDGETS)


def test_proven_rows_of_the_smallest_case_match_the_script() -> None:
    """Each proven row of p=4, m=8 is what the script prints now (a proven row does not depend
    on the solver's luck: its makespan and bound are the optimum)."""
    mod = _script()
    proven = [r for r in _page_rows(mod)
              if r.startswith("| 4 | 8 |") and r.split("|")[9].strip() == "yes"]
    assert len(proven) >= 3
    for line in proven:
        cells = [c.strip() for c in line.strip("|").split("|")]
        again = mod.row(4, 8, cells[2], float(cells[3]), time_limit=20)
        assert again == line


def test_search_is_within_one_percent_of_every_proven_optimum_in_the_table() -> None:
    """Wherever the page says the optimum is proven, the search is within 1% of it."""
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in _page_rows(_script())]
    proven = [r for r in rows if r[8] == "yes"]
    assert proven
    for r in proven:
        assert float(r[5]) <= 1.01 * float(r[6]), r
