"""Degenerate sizes (m < p, m = 1, p = 1, v the generator does not support): every generator
gives a fully working schedule or a clear SpecError, exactly where its documented constraint
says, and the table in docs/reliability.md is the one this code renders."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from degenerate import COLUMNS, clear_problem, outcome, sweep, table

from pipeblocks.generators import get, names

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
STALE = "docs/reliability.md is stale: run `.venv/bin/python docs/make_reliability.py --table`"

# What each generator accepts, written from docs/design.md, "Generation rules" and the generators'
# docstrings (not from their code): (p, m, v) -> accepted. v is the effective stages per rank.
_V1: Callable[[int, int, int], bool] = lambda p, m, v: v == 1  # noqa: E731
_V2: Callable[[int, int, int], bool] = lambda p, m, v: v == 2  # noqa: E731
DOCUMENTED: dict[str, Callable[[int, int, int], bool]] = {
    "gpipe": _V1, "1f1b": _V1, "zb-h1": _V1, "zb-h2": _V1,
    "1f1b-v": _V2, "v-min": _V2, "v-half": _V2, "v-zb": _V2, "zb-v": _V2,
    "dualpipe-v": lambda p, m, v: v == 2 and m >= 2 * p,
    "interleaved-1f1b": lambda p, m, v: v >= 2 and m % p == 0,
    "looped-bfs": lambda p, m, v: True,
}


@pytest.mark.parametrize("name", names())
def test_each_column_works_or_is_refused_clearly(name: str) -> None:
    """Every column of the table: a schedule that validates, simulates, lowers and passes the
    deadlock check (outcome() runs them all), or a one-line SpecError with values and a fix."""
    for label, p, m, v in COLUMNS:
        r = outcome(name, p, m, v)
        if not r.ok:
            assert clear_problem(name, r.message) is None, (label, r.message)
            assert r.why and r.why != r.message, f"{label}: constraint not found in {r.message}"


@pytest.mark.parametrize("name", sorted(set(DOCUMENTED) & set(names())))
def test_refusals_are_exactly_the_documented_constraints(name: str) -> None:
    """Over p in 1..5, m in 1..2p+1, v in 1..4 a generator refuses exactly the sizes its
    documented constraint excludes: no hidden limit, no silently accepted bad size."""
    rule = DOCUMENTED[name]
    for p in range(1, 6):
        for m in range(1, 2 * p + 2):
            for v in range(1, 5):
                assert outcome(name, p, m, v).ok == rule(p, m, v), (name, p, m, v)
    default = get(name).stages_per_rank
    assert outcome(name, 2, 4, None).ok == rule(2, 4, default)


def test_sweep_checks_every_generator() -> None:
    """The sweep behind docs/reliability.md's counts covers every generator, each accepting
    some sizes, and finds every refusal clear (sweep() asserts it)."""
    counts = sweep()
    assert set(counts) == set(names())
    assert all(0 < ok <= tried for ok, tried in counts.values()), counts


def test_docs_table_is_current() -> None:
    """docs/reliability.md holds exactly the table this code renders now."""
    text = DOC.read_text()
    found = re.search(r"<!-- degenerate-table -->\n(.*?)\n<!-- /degenerate-table -->", text, re.S)
    assert found, "docs/reliability.md lacks the degenerate-table markers"
    assert found.group(1).strip() == table(), STALE
