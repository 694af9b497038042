"""The exact solver: proven optima, sound bounds, the memory limit, and the search against it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeblocks.generators import generate, generators
from pipeblocks.ir import PipelineSpec, validate
from pipeblocks.search import Budget, search
from pipeblocks.search.exact import solve_exact
from pipeblocks.search.optimum import search_exact
from pipeblocks.sim import UNIT, UniformCosts, simulate
from pipeblocks.sim.tables import tables

pytest.importorskip("ortools", reason="the exact solver needs OR-Tools (the 'solver' extra)")

ROOT = Path(__file__).resolve().parents[2]
ZB_15B = UniformCosts(f=18.522, b=18.086, w=9.337, comm=0.601)


def _table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_search_table",
                                                  ROOT / "docs" / "make_search_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_search_table"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cli_proves_the_acceptance_case_within_a_minute() -> None:
    """`search --exact -p 4 -m 8 --memory 1.0 --cost f=1,b=1,w=1,comm=0 --json` proves 25.5."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "pipeblocks"), "search", "--exact", "-p", "4", "-m",
         "8", "--memory", "1.0", "--cost", "f=1,b=1,w=1,comm=0", "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    seconds = time.perf_counter() - t0
    obj = json.loads(out.stdout.strip().splitlines()[-1])
    assert obj["optimal"] is True and obj["makespan"] == obj["bound"] == 25.5
    assert obj["costs"] == "--cost (per rank) f=1,b=1,w=1,comm=0"
    assert {p["placement"] for p in obj["placements"]} == {"v", "loop"}
    assert seconds < 60


def test_bound_is_below_every_named_schedule() -> None:
    """The proven bound of a placement is no more than any named schedule of it that fits."""
    for spec, frac in ((PipelineSpec(3, 6, 2, "v"), 0.75), (PipelineSpec(3, 6), 1.0)):
        limit = Budget.fraction(frac).limit(tables(spec, ZB_15B))
        r = solve_exact(spec, ZB_15B, limit, time_limit=5)
        assert r.bound <= r.makespan
        for gen in generators():
            try:
                s = generate(gen.name, 3, 6)
            except Exception:
                continue
            sim = simulate(s, ZB_15B)
            if s.spec == spec and max(sim.peak_memory) <= limit + 1e-9:
                assert sim.makespan >= r.bound - 1e-6, gen.name


def test_solver_improves_a_poor_hint_and_proves_it() -> None:
    """From GPipe as the hint, the solver finds and proves a shorter valid schedule."""
    hint = generate("gpipe", 2, 4)
    r = solve_exact(hint.spec, UNIT, limit=4.0, hint=hint, time_limit=20)
    validate(r.schedule)
    assert r.hint_makespan == simulate(hint).makespan
    assert r.optimal and r.makespan < r.hint_makespan
    assert r.schedule.name == "exact:loop(limit=4)"


def test_memory_limit_is_kept_over_time() -> None:
    """Every rank's simulated peak stays within the limit the solver was given."""
    spec = PipelineSpec(3, 6, 2, "v")
    r = solve_exact(spec, UNIT, limit=3.0, time_limit=5)
    validate(r.schedule)
    assert max(simulate(r.schedule).peak_memory) <= 3.0


def test_times_off_the_quantum_are_rounded_down_and_said() -> None:
    """Thirds are no multiple of the quantum: the result says so, the bound stays below the
    real makespan, and "optimal" means they meet."""
    costs = UniformCosts(f=1 / 3, b=2 / 3, w=1 / 3)
    r = solve_exact(PipelineSpec(2, 3), costs, limit=2.0, time_limit=10)
    assert r.rounded and "rounded down" in r.summary()["rounding"]
    assert r.bound <= r.makespan
    assert r.optimal == (r.makespan <= r.bound + 1e-9)


CASES = [  # (p, m, profile, budget): small enough to prove in seconds
    (2, 4, "unit", 0.5), (2, 4, "unit", 1.0), (2, 4, "unit", 2.0),
    (2, 4, "zb-1.5b", 1.5), (2, 4, "zb-1.5b", 2.0), (2, 4, "hetero", 0.5),
    (3, 6, "unit", 1.0), (4, 8, "unit", 1.0),
]


@pytest.mark.parametrize(("p", "m", "profile", "budget"), CASES)
def test_search_is_within_one_percent_of_every_proven_optimum(p: int, m: int, profile: str,
                                                              budget: float) -> None:
    """Where the solver proves a placement's optimum, the heuristic search is within 1% of it
    (at least one placement is proven in each case, so the check is never empty)."""
    costs = _table_module().PROFILES[profile]
    r = search_exact((p, m), costs, budget, time_limit=20)
    proven = [e for e in r.exact if e.optimal]
    assert proven, [e.summary() for e in r.exact]
    for e in proven:
        assert search((p, m), costs, budget).makespan <= 1.01 * e.makespan, e.summary()


def test_a_hint_with_float_noise_stays_a_schedule_of_the_model() -> None:
    """Times such as 1.5 x 18.522 / 2 add up with float noise; the hint is timed in whole
    quanta, so the model keeps it (it once called such a case infeasible) and the bound holds."""
    costs = _table_module().PROFILES["hetero"]
    spec = PipelineSpec(4, 8, 2, "v")
    hint = generate("zb-v", 4, 8)
    limit = Budget.fraction(1.0).limit(tables(spec, costs))
    r = solve_exact(spec, costs, limit, hint=hint, time_limit=5)
    assert r.status in ("OPTIMAL", "FEASIBLE") and not r.rounded
    assert r.bound <= r.makespan <= simulate(hint, costs).makespan
