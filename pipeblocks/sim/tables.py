"""Per-stage numbers of one cost model for one spec: pass times, transfers, memory.

The simulator and the search ask the same questions many times (how long is stage s's B, how
much does its F allocate, what does the transfer into stage s cost); :func:`tables` asks the
cost model once per stage, checks the answers and keeps them in tuples. Transfers follow the
dependency rules (docs/design.md, "Passes and dependencies"): an edge between two stages on
different ranks costs one transfer, the V turn is free.

    >>> from pipeblocks.ir import PipelineSpec
    >>> from pipeblocks.sim import UniformCosts
    >>> t = tables(PipelineSpec(2, 4, 2, "v"), UniformCosts(f=3, b=4, w=2, comm=0.5))
    >>> t.f, t.comm_act        # F takes 3/2 per stage; no transfer into the turn (stage 2)
    ((1.5, 1.5, 1.5, 1.5), (0.0, 0.5, 0.0, 0.5))
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.sim.costs import CostModel, one_f_one_b_peak

__all__ = ["Tables", "tables", "fits"]


@dataclass(frozen=True, slots=True)
class Tables:
    """Per stage s: pass times ``f[s]``, ``b[s]``, ``w[s]`` and ``bw[s]`` (the cost model's own
    fused time); ``comm_act[s]`` (activation from stage s-1 into s) and ``comm_grad[s]``
    (gradient from s+1 into s), 0 on one rank; ``mem_f[s]``, ``mem_w[s]``; ``rank_of[s]``;
    ``reference``: 1F1B's peak for the spec."""

    spec: PipelineSpec
    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    bw: tuple[float, ...]
    comm_act: tuple[float, ...]
    comm_grad: tuple[float, ...]
    mem_f: tuple[float, ...]
    mem_w: tuple[float, ...]
    rank_of: tuple[int, ...]
    reference: float

    def duration(self, stage: int, kind: Pass) -> float:
        """How long one pass of ``kind`` on ``stage`` takes, BW counted as B + W (the search's
        view: it splits every backward)."""
        if kind is Pass.F:
            return self.f[stage]
        if kind is Pass.B:
            return self.b[stage]
        if kind is Pass.W:
            return self.w[stage]
        return self.b[stage] + self.w[stage]


def tables(spec: PipelineSpec, costs: CostModel) -> Tables:
    """Ask ``costs`` about every stage of ``spec`` once; every time must be finite and >= 0 and
    every stage's memory 0 <= mem_w <= mem_f (a cost model that does not fit the spec raises
    its own :class:`~pipeblocks.errors.SpecError`)."""
    n = spec.num_stages
    rank_of = tuple(spec.rank_of(s) for s in range(n))
    times = {k: tuple(_finite(float(costs.pass_time(spec, s, k)), f"pass time of stage {s} "
                              f"{k.value}", "must be finite and >= 0") for s in range(n))
             for k in (Pass.F, Pass.B, Pass.W, Pass.BW)}
    comm_act = [0.0] * n
    comm_grad = [0.0] * n
    for s in range(n):
        if s > 0 and rank_of[s - 1] != rank_of[s]:
            comm_act[s] = float(costs.comm_time(spec, rank_of[s - 1], rank_of[s], s - 1))
        if s < n - 1 and rank_of[s + 1] != rank_of[s]:
            comm_grad[s] = float(costs.comm_time(spec, rank_of[s + 1], rank_of[s], s + 1))
    for name, row in (("activation", comm_act), ("gradient", comm_grad)):
        for s, t in enumerate(row):
            _finite(t, f"{name} transfer time into stage {s}", "must be >= 0")
    mem = [costs.memory(spec, s) for s in range(n)]
    for s, (mf, mw) in enumerate(mem):
        if not 0 <= mw <= mf < float("inf"):
            raise SpecError(f"memory of stage {s} is mem_f={mf}, mem_w={mw}; need "
                            f"0 <= mem_w <= mem_f")
    return Tables(
        spec=spec, f=times[Pass.F], b=times[Pass.B], w=times[Pass.W], bw=times[Pass.BW],
        comm_act=tuple(comm_act), comm_grad=tuple(comm_grad),
        mem_f=tuple(float(mf) for mf, _ in mem), mem_w=tuple(float(mw) for _, mw in mem),
        rank_of=rank_of, reference=one_f_one_b_peak(spec, costs),
    )


def _finite(t: float, what: str, need: str) -> float:
    if not 0 <= t < float("inf"):
        raise SpecError(f"{what} is {t}; {need}")
    return t


def fits(spec: PipelineSpec, costs: CostModel) -> str:
    """Why ``costs`` cannot time ``spec`` ("" when it can): a per-stage costs file describes
    one number of stages, so it fits only the placements with that many."""
    try:
        for s in range(spec.num_stages):
            costs.memory(spec, s)
            costs.pass_time(spec, s, Pass.F)
    except SpecError as e:
        return str(e)
    return ""
