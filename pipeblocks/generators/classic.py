"""GPipe and 1F1B: the classic single-chunk schedules (loop placement, v = 1).

    >>> from pipeblocks.generators import generate
    >>> print(generate("gpipe", num_ranks=2, num_microbatches=2))
    rank 0 |  F0  F1 BW0 BW1
    rank 1 |  F0  F1 BW0 BW1
"""

from __future__ import annotations

from pipeblocks.generators.registry import register
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec


@register("gpipe", summary="all forwards, then all backwards", source="Huang et al. 2019, GPipe")
def gpipe(spec: PipelineSpec) -> Schedule:
    """GPipe: every F, then every BW, microbatches in order (peak m/p of 1F1B's).

    >>> print(gpipe(PipelineSpec(2, 3)))
    rank 0 |  F0  F1  F2 BW0 BW1 BW2
    rank 1 |  F0  F1  F2 BW0 BW1 BW2
    """
    m = spec.num_microbatches
    programs = []
    for rank in range(spec.num_ranks):
        programs.append(
            [Action(rank, Pass.F, j) for j in range(m)] + [Action(rank, Pass.BW, j) for j in range(m)]
        )
    return Schedule.from_lists(spec, programs)


@register("1f1b", summary="one forward, one backward", source="Narayanan et al. 2019, PipeDream")
def one_f_one_b(spec: PipelineSpec) -> Schedule:
    """1F1B: rank r warms up with min(p-1-r, m) F's, alternates F/BW, drains the rest.

    Rank r holds at most p - r microbatches' activations (docs/design.md, "Generation rules").

    >>> print(one_f_one_b(PipelineSpec(3, 4)))
    rank 0 |  F0  F1  F2 BW0  F3 BW1 BW2 BW3
    rank 1 |  F0  F1 BW0  F2 BW1  F3 BW2 BW3
    rank 2 |  F0 BW0  F1 BW1  F2 BW2  F3 BW3
    """
    p, m = spec.num_ranks, spec.num_microbatches
    programs = []
    for rank in range(p):
        warm = min(p - 1 - rank, m)
        prog = [Action(rank, Pass.F, j) for j in range(warm)]
        for j in range(m - warm):
            prog.append(Action(rank, Pass.F, warm + j))
            prog.append(Action(rank, Pass.BW, j))
        prog += [Action(rank, Pass.BW, j) for j in range(m - warm, m)]
        programs.append(prog)
    return Schedule.from_lists(spec, programs)
