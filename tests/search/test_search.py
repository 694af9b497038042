"""search(): budgets, families, the named generators as a floor, costs, errors, determinism."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, generators
from pipeblocks.ir import Pass, PipelineSpec, validate
from pipeblocks.search import Budget, Objective, Searcher, search
from pipeblocks.search.pareto import budget_ladder, pareto
from pipeblocks.search.refill import program_peaks
from pipeblocks.sim import (
    UNIT,
    Machine,
    TransformerCosts,
    TransformerModel,
    UniformCosts,
    parse_costs,
    simulate,
)
from pipeblocks.sim.tables import tables

UNEQUAL = UniformCosts(f=3, b=4, w=2, comm=0.5)


@dataclass(frozen=True)
class HeavyEnds:
    """Per chunk F=3, B=4, W=2, transfers 0.5; the first and last stages take twice as long
    and hold twice the activation (an embedding and a loss head)."""

    def _heavy(self, spec: PipelineSpec, stage: int) -> float:
        return 2.0 if stage in (0, spec.num_stages - 1) else 1.0

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        base = {Pass.F: 3.0, Pass.B: 4.0, Pass.W: 2.0, Pass.BW: 6.0}[kind]
        return base * 2 / spec.stages_per_rank * self._heavy(spec, stage)

    def comm_time(self, spec: PipelineSpec, src: int, dst: int, stage: int) -> float:
        return 0.0 if src == dst else 0.5

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        h = self._heavy(spec, stage) * 2 / spec.stages_per_rank
        return h, h


def named_runs(p: int, m: int, costs) -> dict[str, tuple[float, float]]:  # type: ignore[no-untyped-def]
    """(peak fraction, makespan) of every named generator that accepts (p, m) and the costs."""
    out = {}
    for gen in generators():
        try:
            spec = gen.spec(p, m)
            tables(spec, costs)
        except SpecError:
            continue
        sim = simulate(gen(spec), costs)
        out[gen.name] = (sim.peak_fraction, sim.makespan)
    return out


@pytest.mark.parametrize("costs", [UNEQUAL, HeavyEnds()], ids=["unequal", "heavy-ends"])
def test_never_slower_than_a_named_schedule_that_fits(costs) -> None:  # type: ignore[no-untyped-def]
    """At every budget from the smallest feasible to 2 x 1F1B (p=8, m=32), the search's
    simulated time is at most every named generator's whose peak fits, and its own peak fits."""
    p, m = 8, 32
    searcher = Searcher(p, m, costs)
    named = named_runs(p, m, costs)
    for budget in budget_ladder(p, searcher.smallest(), 2.0):
        r = searcher.best(budget)
        assert r.peak_fraction <= budget + 1e-9
        for name, (peak, makespan) in named.items():
            if peak <= budget + 1e-9:
                assert r.makespan <= makespan + 1e-9, (budget, name, r.schedule.name)


def test_search_made_schedules_beat_the_named_ones_somewhere() -> None:
    """Without the named generators as candidates the V search alone still beats V-Half at
    V-Half's memory and V-ZB at 1F1B's under unequal costs: the gain is real, not borrowed."""
    p, m = 8, 32
    for name in ("v-half", "v-zb"):
        ref = simulate(generate(name, p, m), UNEQUAL)
        r = search((p, m), UNEQUAL, ref.peak_fraction, family="v", named=False)
        assert r.makespan < ref.makespan
        assert r.family == "v" and r.schedule.name.startswith("search:v(")


def test_result_is_a_valid_schedule_within_budget() -> None:
    """The result validates, its name says how it was made and its peak is within budget."""
    for family in ("v", "zb", "all"):
        r = search((4, 12), UNEQUAL, 0.75, family=family, named=False)
        validate(r.schedule)
        sim = simulate(r.schedule, UNEQUAL)
        assert sim.makespan == r.makespan and sim.peak_fraction <= 0.75
        assert r.schedule.name == f"search:{r.how}"
        assert r.how.startswith({"v": "v(", "zb": "zb("}.get(family, ""))


def test_budget_below_the_smallest_is_an_error_naming_it() -> None:
    """Below every candidate's peak: a SpecError that gives the smallest feasible budget."""
    with pytest.raises(SpecError, match=r"smallest feasible .*: 0\.5 x 1F1B peak .* use a "
                       r"budget of 0\.5 or more, or family 'all' \(feasible down to 0\.125\)"):
        search((8, 32), UNIT, 0.45, family="v")
    with pytest.raises(SpecError, match=r"0\.125 x 1F1B peak"):
        search((8, 32), UNIT, 0.1)
    assert Searcher(8, 32, UNIT, "v").smallest() == 0.5
    assert search((8, 32), UNIT, 0.125).peak_fraction <= 0.125


def test_budget_in_bytes() -> None:
    """A byte budget with the transformer preset: the peak of every rank stays within it, and
    a smaller budget never gives a faster schedule."""
    gpt = TransformerModel(layers=16, hidden=1024, heads=16, seq_len=1024, vocab=32000)
    costs = TransformerCosts(gpt, Machine(flops=1e14, bandwidth=2e10, latency=1e-5))
    ref = tables(PipelineSpec(4, 16, 2, "v"), costs).reference
    last = None
    for share in (0.6, 0.8, 1.0):
        r = search((4, 16), costs, Budget.memory(share * ref))
        assert max(r.peak_memory) <= share * ref * (1 + 1e-9)
        assert r.simulation.memory_unit == "bytes"
        if last is not None:
            assert r.makespan <= last
        last = r.makespan


def test_per_stage_costs_file_fits_only_its_stage_count() -> None:
    """A costs file for 2p stages times the V placement (and interleaved with v=2); the loop
    family with p stages is left out, and family 'zb' has nothing to try."""
    p = 4
    stages = [{"f": 3.0, "b": 4.0, "w": 2.0} for _ in range(2 * p)]
    stages[0] = {"f": 6.0, "b": 8.0, "w": 4.0, "mem_f": 2.0}
    costs = parse_costs({"stages": stages, "comm": 0.5})
    s = Searcher(p, 16, costs)
    assert "zb" in s.skipped and s.v is not None
    r = s.best(1.0)
    assert r.schedule.spec.num_stages == 2 * p
    with pytest.raises(SpecError, match="no candidate schedule fits"):
        search((p, 16), costs, 1.0, family="zb")


def test_deterministic() -> None:
    """The same inputs give the same schedule, name and numbers, also from a fresh searcher."""
    a = search((6, 24), UNEQUAL, 0.7)
    b = search((6, 24), UNEQUAL, 0.7)
    assert a.schedule == b.schedule and a.schedule.name == b.schedule.name
    assert a.summary() == b.summary()


def test_larger_budget_never_slower() -> None:
    """Along the ladder the best makespan never rises (earlier finds stay candidates)."""
    front = pareto(6, 24, UNEQUAL)
    spans = [pt.result.makespan for pt in front.points]
    assert all(b <= a + 1e-9 for a, b in zip(spans, spans[1:], strict=False))
    assert [pt.budget for pt in front.points] == sorted(pt.budget for pt in front.points)
    assert {n.name for n in front.named} >= {"1f1b", "v-half", "zb-h1"}


def test_budget_ladder() -> None:
    """Rungs of 1/(2p) from the smallest feasible up to the top, the smallest first."""
    assert budget_ladder(4, 0.25, 0.5) == [0.25, 0.375, 0.5]
    assert budget_ladder(4, 0.3, 0.5) == [0.3, 0.375, 0.5]


def test_bad_inputs() -> None:
    """Unknown family, a non-positive budget: SpecErrors that say what is allowed."""
    with pytest.raises(SpecError, match="unknown search family"):
        search((4, 8), UNIT, 1.0, family="x")
    with pytest.raises(SpecError, match="must be a finite number > 0"):
        Budget.fraction(0)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_named_peaks_never_fall_as_microbatches_are_added(p: int) -> None:
    """The probe the search uses: a generator's peak with min(m, 2p) microbatches is at most
    its peak with m (so a generator over budget at the probe is over budget at m)."""
    for gen in generators():
        for m in (p, 2 * p + 1, 3 * p, 5 * p):
            try:
                big = gen(gen.spec(p, m))
                small = gen(gen.spec(p, min(m, 2 * p)))
            except SpecError:
                continue
            peak = max(program_peaks(big, tables(big.spec, UNIT)))
            assert max(program_peaks(small, tables(small.spec, UNIT))) <= peak, (gen.name, m)


def test_objective_choices_and_summary() -> None:
    """'makespan' (the default) and 'bubble' rank the candidates, anything else is a SpecError
    naming both; each objective wins its own metric, and the summary says which was used."""
    assert Objective.parse("bubble") is Objective.BUBBLE
    with pytest.raises(SpecError, match="unknown search objective 'fast'; use one of: "
                                        "makespan, bubble"):
        search((4, 8), UNIT, 1.0, objective="fast")
    fast = search((8, 32), UNIT, 13 / 16, family="v", named=False)
    bubble = search((8, 32), UNIT, 13 / 16, family="v", named=False, objective="bubble")
    assert fast.makespan < bubble.makespan and max(bubble.simulation.span) < max(
        fast.simulation.span)
    assert (fast.summary()["objective"], bubble.summary()["objective"]) == ("makespan",
                                                                            "bubble")
