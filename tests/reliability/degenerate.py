"""Degenerate sizes: what each generator does with m < p, m = 1, p = 1 and unusual v.

Each (generator, p, m, v) either gives a schedule that validates, simulates, lowers and passes
the deadlock check, or a :class:`~pipeblocks.errors.SpecError` that names the constraint, the
values and a fix. :func:`table` renders the docs table (docs/reliability.md, written by
docs/make_reliability.py; test_degenerate.py checks it is current), so it cannot drift.

    >>> outcome("1f1b", 4, 2, None).ok, outcome("dualpipe-v", 4, 2, None).why
    (True, 'm >= 2 * p')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, get, names
from pipeblocks.ir import validate
from pipeblocks.ir.lowering import lower
from pipeblocks.sim import UniformCosts, simulate
from pipeblocks.sim.deadlock import check

__all__ = ["COLUMNS", "Outcome", "outcome", "table", "sweep", "clear_problem"]

# The table's columns: a label and the (p, m, v) it tries (v None: the generator's default).
COLUMNS: tuple[tuple[str, int, int, int | None], ...] = (
    ("p=1 m=1", 1, 1, None),
    ("p=1 m=4", 1, 4, None),
    ("p=4 m=1", 4, 1, None),
    ("p=4 m=2", 4, 2, None),
    ("p=4 m=3", 4, 3, None),
    ("p=4 m=4", 4, 4, None),
    ("p=4 m=6", 4, 6, None),
    ("p=3 m=5", 3, 5, None),
    ("p=4 m=8 v=1", 4, 8, 1),
    ("p=4 m=8 v=3", 4, 8, 3),
    ("p=2 m=4 v=4", 2, 4, 4),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """``ok``: a schedule that passed every check; else ``why`` (the constraint, short) and
    ``message`` (the SpecError's text)."""

    ok: bool
    why: str = ""
    message: str = ""


_NEEDS = re.compile(r" needs (.+?) \(got ")
_SHORT = (("num_microbatches", "m"), ("num_ranks", "p"), ("stages_per_rank", "v"))


def outcome(name: str, p: int, m: int, v: int | None) -> Outcome:
    """Generate; a SpecError is the refusal, anything else must pass validate, simulate (unit
    costs), lower and the deadlock check (their errors propagate: a bug, not a refusal)."""
    try:
        schedule = generate(name, p, m, v)
    except SpecError as e:
        found = _NEEDS.search(str(e))
        why = found.group(1) if found else str(e)
        for long, short in _SHORT:
            why = why.replace(long, short)
        return Outcome(False, why, str(e))
    validate(schedule)
    sim = simulate(schedule, UniformCosts())
    assert sim.makespan > 0
    check(lower(schedule))
    return Outcome(True)


def clear_problem(name: str, message: str) -> str | None:
    """What keeps a refusal from being clear (one line naming the generator, the values it got
    and a fix), or None."""
    if "\n" in message:
        return "more than one line"
    if name not in message:
        return "does not name the generator"
    if "(got " not in message:
        return "does not say which values it got"
    if not re.search(r"; (use|drop|set|give)\b", message):
        return "proposes no fix"
    return None


def sweep(max_ranks: int = 5) -> dict[str, tuple[int, int]]:
    """Per generator: (sizes accepted, sizes tried) over p in 1..max_ranks, m in 1..2p+1 and
    v in {default, 1, 2, 3} (each accepted one fully checked, each refusal clear)."""
    out = {}
    for name in names():
        ok = tried = 0
        for p in range(1, max_ranks + 1):
            for m in range(1, 2 * p + 2):
                for v in (None, 1, 2, 3):
                    if v is not None and v == get(name).stages_per_rank:
                        continue  # the default, tried as None
                    result = outcome(name, p, m, v)
                    if not result.ok:
                        problem = clear_problem(name, result.message)
                        assert problem is None, f"{name} p={p} m={m} v={v}: {problem}: " \
                                                f"{result.message}"
                    ok += result.ok
                    tried += 1
        out[name] = (ok, tried)
    return out


def table() -> str:
    """The markdown table of :data:`COLUMNS` for every registered generator."""
    head = "| generator | default v | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---|---|" + "---|" * len(COLUMNS)
    rows = [head, rule]
    for name in names():
        cells = []
        for _, p, m, v in COLUMNS:
            r = outcome(name, p, m, v)
            cells.append("ok" if r.ok else f"no: {r.why}")
        rows.append(f"| {name} | {get(name).stages_per_rank} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
