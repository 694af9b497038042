"""The handcrafted zero-bubble schedules ZB-H1 and ZB-H2 (loop placement, v = 1, split B/W).

Splitting the backward into B (input gradient, on the critical path) and W (weight gradient,
needed by nobody but the optimizer) lets a rank defer W's into the gaps 1F1B leaves idle (see
the note "W deferral" in :mod:`pipeblocks.ir`).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> simulate(generate("zb-h2", num_ranks=4, num_microbatches=8)).bubble_rate
    0.0
"""

from __future__ import annotations

from pipeblocks.errors import SpecError
from pipeblocks.generators.registry import register
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["zb_h1", "zb_h2", "zb_handcrafted"]


def zb_handcrafted(spec: PipelineSpec, depth: int) -> Schedule:
    """ZB-H1 (``depth`` 1) or ZB-H2 (``depth`` 2) on ``spec`` (docs/design.md, "Generation rules").

    Rank r warms up with min(c·(p-1-r), m) F's (c = ``depth``); then for each microbatch i: the
    next F if any remain, B(i), and the oldest pending W once i >= c·r. The c·r deferred W's
    close the program; they fill the cool-down that 1F1B leaves idle.
    """
    if spec.placement is not Placement.LOOP or spec.stages_per_rank != 1:
        raise SpecError(
            f"zb-h{depth} needs placement 'loop' with stages_per_rank == 1 (got "
            f"{spec.describe()}); use PipelineSpec(p, m) or generate('zb-h{depth}', p, m)"
        )
    p, m = spec.num_ranks, spec.num_microbatches
    programs = []
    for rank in range(p):
        warm = min(depth * (p - 1 - rank), m)
        prog = [Action(rank, Pass.F, j) for j in range(warm)]
        next_f, next_w = warm, 0
        for i in range(m):
            if next_f < m:
                prog.append(Action(rank, Pass.F, next_f))
                next_f += 1
            prog.append(Action(rank, Pass.B, i))
            if i >= depth * rank:
                prog.append(Action(rank, Pass.W, next_w))
                next_w += 1
        prog += [Action(rank, Pass.W, j) for j in range(next_w, m)]
        programs.append(prog)
    return Schedule.from_lists(spec, programs)


@register(
    "zb-h1",
    summary="1F1B's memory, W's deferred into the cool-down",
    source="Qi et al. 2024, Zero Bubble Pipeline Parallelism (ICLR), ZB-H1",
)
def zb_h1(spec: PipelineSpec) -> Schedule:
    """ZB-H1: 1F1B's warm-up and peak (min(m, p) activations), rank r defers r W's.

    Bubble time (paper metric) (p-1)(T_F + T_B - T_W) when m >= p and T_W <= T_F; the bubble
    rate is (p-1)/(3m + p-1) under unit costs. Below m = p, rank 0 idles 2p-1-m units.

    >>> print(zb_h1(PipelineSpec(3, 4)))
    rank 0 | F0 F1 F2 B0 W0 F3 B1 W1 B2 W2 B3 W3
    rank 1 | F0 F1 B0 F2 B1 W0 F3 B2 W1 B3 W2 W3
    rank 2 | F0 B0 F1 B1 F2 B2 W0 F3 B3 W1 W2 W3
    """
    return zb_handcrafted(spec, 1)


@register(
    "zb-h2",
    summary="zero bubble at about twice 1F1B's memory",
    source="Qi et al. 2024, Zero Bubble Pipeline Parallelism (ICLR), ZB-H2",
)
def zb_h2(spec: PipelineSpec) -> Schedule:
    """ZB-H2: 2(p-1-r) warm-up F's, rank r defers 2r W's; peak min(m, 2p-1), no bubble.

    Bubble time (paper metric) max(0, (p-1)(T_F + T_B - 2T_W)) when m >= 2p-1 and
    T_W <= T_F: zero under unit costs. Below m = 2p-1, rank 0 idles 2p-1-m units.

    >>> print(zb_h2(PipelineSpec(2, 3)))
    rank 0 | F0 F1 F2 B0 W0 B1 W1 B2 W2
    rank 1 | F0 B0 F1 B1 F2 B2 W0 W1 W2
    """
    return zb_handcrafted(spec, 2)
