"""Selective offload: which (stage, microbatch) pairs to offload to meet a memory budget.

PipeOffload's observation: where the schedule holds a microbatch's activations for long, the
copy to host and back hides behind the compute in between, and offloading it is free; where
it holds them briefly, the copy shows. :func:`auto_offload` is a greedy search over simulated
cost: it orders each rank's eligible pairs by how long the plain schedule holds them (F's end
to B's start, longest first: the cheapest to hide and the ones that overlap the peak most),
then, round by round, simulates and adds the next pair on every rank still over the budget,
until every rank fits. Each round is one simulation, so a budget costs at most (pairs per
rank) simulations. It is greedy: the result meets the budget, not necessarily at the least
possible slowdown.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.ir.moves import OffloadLink
    >>> from pipeblocks.sim import simulate
    >>> s = auto_offload(generate("gpipe", 4, 8), 1.0, link=OffloadLink(4.0))  # 1F1B's memory
    >>> sim = simulate(s)
    >>> sim.peak_fraction, sim.makespan, len(s.offload.pairs)    # plain gpipe: 2.0, 33
    (1.0, 33.0, 24)
"""

from __future__ import annotations

from pipeblocks.errors import SpecError
from pipeblocks.ir.moves import OffloadLink
from pipeblocks.ir.offload import eligible, with_offload
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.engine import simulate

__all__ = ["auto_offload"]


def auto_offload(schedule: Schedule, budget: float, costs: CostModel | None = None,
                 link: OffloadLink | None = None) -> Schedule:
    """``schedule`` with the pairs the greedy search picks so that every rank's peak is at
    most ``budget`` x 1F1B's peak (the search's ``--memory`` fraction); a SpecError names the
    least fraction offloading every eligible pair reaches when that is not enough."""
    base = schedule if schedule.offload is None else with_offload(schedule, [])
    link = link or (schedule.offload.link if schedule.offload else OffloadLink())
    plain = simulate(base, costs, validate=False)
    limit = budget * plain.reference_peak
    spec = schedule.spec
    by_rank: list[list[tuple[int, int]]] = [[] for _ in range(spec.num_ranks)]
    held: dict[tuple[int, int], float] = {}
    for spans in plain.spans:
        f_end = {(sp.action.stage, sp.action.mb): sp.end for sp in spans
                 if sp.action.kind.value == "F"}
        for sp in spans:
            k = (sp.action.stage, sp.action.mb)
            if sp.action.kind.frees_input_grad and k in f_end:
                held[k] = sp.start - f_end[k]
    for k in eligible(base):
        by_rank[spec.rank_of(k[0])].append(k)
    for pairs in by_rank:
        pairs.sort(key=lambda k: (-held.get(k, 0.0), k))
    taken = [0] * spec.num_ranks
    current, sim = base, plain
    while True:
        over = [r for r, pk in enumerate(sim.peak_memory) if pk > limit * (1 + 1e-9)]
        if not over:
            return current
        grow = [r for r in over if taken[r] < len(by_rank[r])]
        if not grow:
            least = max(simulate(with_offload(base, link=link), costs).peak_memory)
            raise SpecError(
                f"memory budget {budget:g} x 1F1B peak is below what offload reaches for "
                f"{schedule.name or 'this schedule'} (every eligible pair offloaded: "
                f"{least / plain.reference_peak:.4g} x 1F1B peak); use a budget of at least "
                f"that, recompute, or another schedule")
        for r in grow:
            taken[r] += 1
        chosen = [k for r, pairs in enumerate(by_rank) for k in pairs[: taken[r]]]
        current = with_offload(base, chosen, link)
        sim = simulate(current, costs, validate=False)
