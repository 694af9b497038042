"""A simulated step of a data-parallel pipeline: the passes, then the gradient reductions.

Each pipeline of the mesh runs the same schedule, so one pipeline's timeline is every
pipeline's. The ``REDUCE_GRAD`` op of a stage (:func:`pipeblocks.ir.hybrid.with_data_parallel`)
starts when its last W or BW ends and the rank's previous reduction is done (one communication
stream per rank, in program order); it is asynchronous, so it delays no pass, and the step ends
when the last pass or the last reduction does. A reduction is a ring all-reduce of the stage's
gradient bytes over the ``dp`` ranks of its data-parallel group, ``pp * tp`` ranks apart
(:class:`pipeblocks.sim.collectives.Network` picks the intra- or inter-node link).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim.collectives import Link, Network
    >>> from pipeblocks.sim.costs import UniformCosts
    >>> net = Network(gpus_per_node=2, intra=Link(1e9), inter=Link(1e8))
    >>> s = generate("1f1b", num_ranks=2, num_microbatches=4)
    >>> dp = simulate_data_parallel(s, UniformCosts(f=1, b=1, w=1), grad_bytes=1e6,
    ...                             dp=2, network=net, seconds_per_unit=1e-3)
    >>> dp.reductions[0][0].stage, round(dp.reductions[0][0].end - dp.reductions[0][0].start, 3)
    (0, 10.0)
    >>> round(dp.makespan, 3), round(dp.base.makespan, 3)
    (25.0, 15.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeblocks.ir.hybrid import last_grad_pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.collectives import Network
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.engine import Simulation, simulate

__all__ = ["Reduction", "DataParallelSimulation", "simulate_data_parallel", "reduce_time"]


@dataclass(frozen=True, slots=True)
class Reduction:
    """One stage's gradient all-reduce on the timeline (in the cost model's time unit)."""

    rank: int
    stage: int
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class DataParallelSimulation:
    """The pipeline's simulation (``base``) with the reductions of each rank."""

    base: Simulation
    reductions: tuple[tuple[Reduction, ...], ...]
    makespan: float

    @property
    def exposed(self) -> float:
        """Time the reductions add to the step (not hidden behind passes)."""
        return self.makespan - self.base.makespan


def reduce_time(nbytes: float, *, dp: int, network: Network, stride: int = 1) -> float:
    """Seconds to all-reduce ``nbytes`` of gradients over ``dp`` ranks ``stride`` apart."""
    return network.all_reduce(nbytes, size=dp, stride=stride)


def simulate_data_parallel(
    schedule: Schedule, costs: CostModel, *, grad_bytes: float | Sequence[float], dp: int,
    network: Network, tp: int = 1, seconds_per_unit: float = 1.0,
) -> DataParallelSimulation:
    """Simulate one step of ``dp`` replicas of ``schedule`` with DDP-style reductions.

    ``grad_bytes``: gradient bytes of each stage (one number: every stage); the costs' time
    unit is ``seconds_per_unit`` seconds (1e-3 for costs in ms).
    """
    base = simulate(schedule, costs)
    spec = schedule.spec
    per_stage = ([float(grad_bytes)] * spec.num_stages
                 if isinstance(grad_bytes, int | float) else [float(b) for b in grad_bytes])
    stride = spec.num_ranks * tp
    out = []
    end = base.makespan
    for rank, prog in enumerate(schedule.programs):
        last = last_grad_pass(prog)
        free = 0.0
        mine = []
        for stage, pos in sorted(last.items(), key=lambda kv: kv[1]):
            t = reduce_time(per_stage[stage], dp=dp, network=network, stride=stride)
            start = max(free, base.ends[rank][pos])
            free = start + t / seconds_per_unit
            mine.append(Reduction(rank, stage, start, free))
        end = max(end, free)
        out.append(tuple(mine))
    return DataParallelSimulation(base, tuple(out), end)
