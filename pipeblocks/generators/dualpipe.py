"""DualPipeV (DeepSeek): the V-shaped, one-copy form of DualPipe (V placement, v = 2).

Each rank runs eight phases with closed-form counts. On real hardware DualPipeV overlaps a
forward of one chunk with a backward of the other in one "F&B" step (computation of one hides
the other's communication); in our IR such a step is simply the two passes, F first. The timing
of that overlap is therefore not modelled by :mod:`pipeblocks.sim`: its bubble there is the
sequential one.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> sim = simulate(generate("dualpipe-v", num_ranks=4, num_microbatches=8))
    >>> sim.peak_memory, max(sim.span) - sim.busy[0]  # 2p+1 chunk-activations; (p-1)/2 idle
    ((9.0, 9.0, 9.0, 9.0), 1.5)
"""

from __future__ import annotations

from collections import deque

from pipeblocks.errors import SpecError
from pipeblocks.generators.registry import register
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["dualpipe_v"]


class _Rank:
    """One rank's program under construction, with DualPipeV's queue of deferred W's."""

    def __init__(self, rank: int, p: int) -> None:
        self.s0, self.s1 = rank, 2 * p - 1 - rank
        self.actions: list[Action] = []
        self.next_f = {self.s0: 0, self.s1: 0}
        self.next_b = {self.s0: 0, self.s1: 0}
        self.deferred: deque[Action] = deque()

    def f(self, stage: int) -> None:
        self.actions.append(Action(stage, Pass.F, self.next_f[stage]))
        self.next_f[stage] += 1

    def b(self, stage: int, split: bool = False) -> None:
        """The backward of ``stage``: fused BW, or B now and its W queued (W deferral)."""
        j = self.next_b[stage]
        self.next_b[stage] += 1
        if split:
            self.actions.append(Action(stage, Pass.B, j))
            self.deferred.append(Action(stage, Pass.W, j))
        else:
            self.actions.append(Action(stage, Pass.BW, j))

    def w(self) -> None:
        """Run the oldest deferred W."""
        self.actions.append(self.deferred.popleft())


@register(
    "dualpipe-v",
    placement=Placement.V,
    stages_per_rank=2,
    summary="DeepSeek's DualPipeV: F&B overlap phases on the V placement",
    source="DeepSeek-AI 2024, DeepSeek-V3 Technical Report; github.com/deepseek-ai/DualPipe",
)
def dualpipe_v(spec: PipelineSpec) -> Schedule:
    """DualPipeV: rank r (chunks s0 = r, s1 = 2p-1-r) runs eight phases; needs m >= 2p.

    Phase counts (``nF0`` means "n times F(s0)", ``B`` a backward):

    1. ``nF0``: 2(p-r-1);            2. ``nF0F1``: r+1;
    3. ``nB1W1F1``: p-r-1, B split and its W run at once;
    4. ``nF0B1F1B0`` (steady, two F&B steps): m-2p+r+1;
    5. ``nB1F1B0``: p-r-1;           6. ``nB1B0``: r+1, the second half split (W deferred);
    7. ``nWB0``: p-r-1, B split;     8. ``nW``: r+1, the deferred W's.

    B and W are split exactly where DualPipeV splits them (its "zero bubble" W deferral, see
    the note in :mod:`pipeblocks.ir`): in phase 3 (the W runs right away), from the middle of
    phase 6 and in phase 7; the W's of phases 6-7 fill phases 7-8. Everywhere else the backward
    is fused (BW). Under unit costs and unit memory (simulated, tested for p <= 16):

    - every rank holds 2p chunk-activations after phase 2 and 2p+1 at its peak (the F of an
      F&B step runs before its backward frees): (2p+1)/(2p) of 1F1B's, i.e. p + 1/2
      stage-activations; DualPipe's README counts PP+1 for its two-direction form;
    - the bubble time (paper metric) is (p-1)/2, i.e. p-1 chunk F's, for every m >= 2p.

    >>> print(dualpipe_v(PipelineSpec(2, 4, 2, "v")))  # doctest: +NORMALIZE_WHITESPACE
    rank 0 |  0F0  0F1  0F2  3F0  3B0  3W0  3F1  0F3 3BW1  3F2 0BW0 3BW2  3F3 0BW1 3BW3  0B2  0W2
              0B3  0W3
    rank 1 |  1F0  2F0  1F1  2F1  1F2 2BW0  2F2 1BW0  1F3 2BW1  2F3 1BW1 2BW2 1BW2  2B3  1B3  2W3
              1W3
    """
    if spec.placement is not Placement.V:  # the registry checks this; direct calls too
        raise SpecError(
            f"dualpipe-v needs placement 'v' (got '{spec.placement.value}'); use "
            f"PipelineSpec(p, m, 2, 'v') or generate('dualpipe-v', p, m)"
        )
    p, m = spec.num_ranks, spec.num_microbatches
    if m < 2 * p:
        raise SpecError(
            f"dualpipe-v needs num_microbatches >= 2 * num_ranks (got m={m}, p={p}); "
            f"use m={2 * p} or more"
        )
    programs = []
    for rank in range(p):
        g = _Rank(rank, p)
        s0, s1 = g.s0, g.s1
        for _ in range(2 * (p - rank - 1)):  # 1. nF0
            g.f(s0)
        for _ in range(rank + 1):  # 2. nF0F1
            g.f(s0)
            g.f(s1)
        for _ in range(p - rank - 1):  # 3. nB1W1F1
            g.b(s1, split=True)
            g.w()
            g.f(s1)
        for _ in range(m - 2 * p + rank + 1):  # 4. steady: (F0&B1) (F1&B0)
            g.f(s0)
            g.b(s1)
            g.f(s1)
            g.b(s0)
        for _ in range(p - rank - 1):  # 5. nB1F1B0: B1, (F1&B0)
            g.b(s1)
            g.f(s1)
            g.b(s0)
        half = (rank + 1) // 2
        for i in range(rank + 1):  # 6. nB1B0: from the middle on, B's are split
            g.b(s1, split=i > half or (i == half and rank % 2 == 1))
            g.b(s0, split=i >= half)
        for _ in range(p - rank - 1):  # 7. nWB0
            g.w()
            g.b(s0, split=True)
        for _ in range(rank + 1):  # 8. nW
            g.w()
        programs.append(g.actions)
    return Schedule.from_lists(spec, programs)
