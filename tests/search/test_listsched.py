"""The list scheduler: valid schedules within the limit, and what it adds to the search."""

from __future__ import annotations

import pytest

from pipeblocks.errors import DeadlockError
from pipeblocks.ir import PipelineSpec, validate
from pipeblocks.search import search
from pipeblocks.search.listsched import LIST_RULES, list_schedule
from pipeblocks.sim import UNIT, UniformCosts, simulate
from pipeblocks.sim.tables import tables

COSTS = [UNIT, UniformCosts(f=18.522, b=18.086, w=9.337, comm=0.601)]


@pytest.mark.parametrize("p", [2, 3, 4])
@pytest.mark.parametrize("placement", ["v", "loop"])
def test_every_rule_gives_a_valid_schedule_within_the_limit(p: int, placement: str) -> None:
    """Every rule that gets through validates and never holds more than the limit; at twice
    1F1B's memory every rule gets through."""
    for m in (p, 2 * p + 1):
        spec = PipelineSpec(p, m, 2 if placement == "v" else 1, placement)
        for costs in COSTS:
            tab = tables(spec, costs)
            for limit in sorted({max(tab.mem_f) * 2, tab.reference / 2, tab.reference * 2}):
                for rule in LIST_RULES:
                    try:
                        s = list_schedule(spec, costs, limit, rule)
                    except DeadlockError:
                        assert limit < tab.reference * 2, rule
                        continue
                    validate(s)
                    assert max(simulate(s, costs).peak_memory) <= limit + 1e-9, rule


def test_search_gets_tight_budgets_from_the_v_placement() -> None:
    """At the smallest budget (one activation per rank for the loop, 1/p of 1F1B) the V
    placement under the list scheduler takes 50.5, where the loop's best takes 72."""
    r = search((4, 8), UNIT, 0.25)
    assert r.family == "list" and r.schedule.name.startswith("search:list(v,")
    assert r.makespan == 50.5 and r.peak_fraction <= 0.25
