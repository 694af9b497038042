"""Multi-stage loop schedules: Megatron's interleaved 1F1B and looped breadth-first.

Both use the ``loop`` placement with v stages per rank (stage s on rank s mod p, local slot
s // p), so each rank runs v model chunks of 1/(p·v) of the model each.

    >>> from pipeblocks.generators import generate
    >>> print(generate("looped-bfs", num_ranks=2, num_microbatches=2))
    rank 0 |  0F0  0F1  2F0  2F1 2BW0 2BW1 0BW0 0BW1
    rank 1 |  1F0  1F1  3F0  3F1 3BW0 3BW1 1BW0 1BW1
"""

from __future__ import annotations

from pipeblocks.errors import SpecError
from pipeblocks.generators.registry import register
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["interleaved_1f1b", "looped_bfs"]


def _check_loop(spec: PipelineSpec, name: str) -> None:
    if spec.placement is not Placement.LOOP:  # the registry checks this; direct calls too
        raise SpecError(
            f"{name} needs placement 'loop' (got '{spec.placement.value}'); use "
            f"PipelineSpec(p, m, v) or generate('{name}', p, m, v)"
        )


def _check_interleaved(spec: PipelineSpec) -> None:
    _check_loop(spec, "interleaved-1f1b")
    p, m, v = spec.num_ranks, spec.num_microbatches, spec.stages_per_rank
    if v < 2:
        raise SpecError(
            f"interleaved-1f1b needs stages_per_rank >= 2 (got v={v}); use --stages-per-rank 2, "
            f"or the '1f1b' schedule for one stage per rank"
        )
    if m % p:
        lower = m - m % p
        legal = [x for x in (lower, lower + p) if x >= p]
        raise SpecError(
            f"interleaved-1f1b needs num_microbatches % num_ranks == 0 (got m={m}, p={p}); "
            f"use m={' or m='.join(map(str, legal))}"
        )


@register(
    "interleaved-1f1b",
    stages_per_rank=2,
    fixed_stages_per_rank=False,
    summary="1F1B over v interleaved chunks per rank (Megatron)",
    source="Narayanan et al. 2021, Efficient Large-Scale Language Model Training (Megatron-LM)",
)
def interleaved_1f1b(spec: PipelineSpec) -> Schedule:
    """Interleaved 1F1B (Megatron-LM): 1F1B over "virtual microbatches" of v chunks per rank.

    Rank r walks virtual microbatches k = 0..m·v-1 in groups of p·v: in group g = k // (p·v)
    the forward chunk is (k mod p·v) // p and the microbatch g·p + k mod p; the backward walks
    the same k with the chunks reversed (v-1-chunk). Rank r warms up with
    min(2(p-1-r) + (v-1)·p, m·v) F's, alternates F/BW, then drains the BW's (docs/design.md,
    "Generation rules"). Needs v >= 2 and m % p == 0. Under unit costs the bubble rate is
    (p-1)/(v·m + p-1); rank 0's peak is (v+1)·p - 1 chunk-activations, i.e. 1 + (p-1)/(p·v) of
    1F1B's, once m >= 2p (with m = p every rank holds all of its m·v activations).

    >>> print(interleaved_1f1b(PipelineSpec(2, 4, 2)))
    rank 0 |  0F0  0F1  2F0  2F1  0F2 2BW0  0F3 2BW1  2F2 0BW0  2F3 0BW1 2BW2 2BW3 0BW2 0BW3
    rank 1 |  1F0  1F1  3F0 3BW0  3F1 3BW1  1F2 1BW0  1F3 1BW1  3F2 3BW2  3F3 3BW3 1BW2 1BW3
    """
    _check_interleaved(spec)
    p, m, v = spec.num_ranks, spec.num_microbatches, spec.stages_per_rank
    group = p * v
    total = m * v
    # Virtual microbatch k -> (chunk, microbatch); the backward reverses the chunk order.
    chunk = [(k % group) // p for k in range(total)]
    mb = [(k // group) * p + k % p for k in range(total)]
    f_kind, bw_kind = Pass.F, Pass.BW
    programs = []
    for rank in range(p):
        fwd = [Action(c * p + rank, f_kind, j) for c, j in zip(chunk, mb, strict=True)]
        bwd = [Action((v - 1 - c) * p + rank, bw_kind, j) for c, j in zip(chunk, mb, strict=True)]
        warm = min(2 * (p - 1 - rank) + (v - 1) * p, total)
        steady = [a for pair in zip(fwd[warm:], bwd[: total - warm], strict=True) for a in pair]
        programs.append(fwd[:warm] + steady + bwd[total - warm :])
    return Schedule.from_lists(spec, programs)


@register(
    "looped-bfs",
    stages_per_rank=2,
    fixed_stages_per_rank=False,
    summary="breadth-first: every microbatch through one local stage before the next",
    source="Lamy-Poirier 2023, Breadth-First Pipeline Parallelism",
)
def looped_bfs(spec: PipelineSpec) -> Schedule:
    """Looped breadth-first (BFS): each local stage runs all m F's before the next one.

    The backward walks the local stages in reverse, all m microbatches per stage (docs/design.md,
    "Generation rules"). Every rank holds all m·v of its activations at the end of the forward
    (peak m/p of 1F1B's, as GPipe); v = 1 is GPipe. Under unit costs the bubble rate is
    (p-1)/(v·m + p-1) once m >= p (then rank 0's m F's of one local stage outlast the first
    microbatch's trip over the other ranks, so the loop never waits).

    >>> print(looped_bfs(PipelineSpec(2, 3, 2)))
    rank 0 |  0F0  0F1  0F2  2F0  2F1  2F2 2BW0 2BW1 2BW2 0BW0 0BW1 0BW2
    rank 1 |  1F0  1F1  1F2  3F0  3F1  3F2 3BW0 3BW1 3BW2 1BW0 1BW1 1BW2
    """
    _check_loop(spec, "looped-bfs")
    m = spec.num_microbatches
    programs = []
    for rank in range(spec.num_ranks):
        stages = spec.stages_of(rank)
        prog = [Action(s, Pass.F, j) for s in stages for j in range(m)]
        prog += [Action(s, Pass.BW, j) for s in reversed(stages) for j in range(m)]
        programs.append(prog)
    return Schedule.from_lists(spec, programs)
