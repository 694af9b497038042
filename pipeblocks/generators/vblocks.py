"""V-Min, V-Half and V-ZB: V-shape schedules built from the CM paper's building blocks.

Qi, Wan, Amar, Lin 2024, "Pipeline Parallelism with Controllable Memory" (arXiv 2405.15362).
Under the ``v`` placement rank i holds stage i (chunk 0) and stage 2p-1-i (chunk 1). Every pass
of a stage takes one slot, so a rank works 6 slots per microbatch (F, B and W of two chunks)
and the block repeats every 6 slots. A block is fixed by the slots of F(chunk 0), F(chunk 1),
B(chunk 1) and B(chunk 0) on each rank (:func:`v_block`); consecutive ranks are δ0 slots apart
for chunk-0 F's and chunk-1 B's and δ1 for chunk-1 F's and chunk-0 B's, and the peak is about
(δ0 + δ1) / 6 of 1F1B's (docs/design.md, "Lifespan and the peak bound"):

- ``v-min`` (δ0, δ1) = (1, 1): peak floor((p+4)/3)/p of 1F1B's, bubble about 2/3 of 1F1B's.
- ``v-half`` (2, 1): peak floor((p+2)/2)/p, bubble about half of 1F1B's.
- ``v-zb`` (4, 2): 1F1B's peak and zero bubble (paper metric) once m >= 2p.

Each generator builds its block, fills the W's (oldest pending first), repeats it, reorders
warm-up and cool-down without raising the peak and squeezes (:func:`pipeblocks.blocks.build`).
Any p >= 1 and m >= 1 work; v-zb needs m >= 2p for its zero bubble (with fewer microbatches
the pipeline never reaches its stable phase).

    >>> from pipeblocks.generators import generate
    >>> print(generate("v-zb", num_ranks=2, num_microbatches=4))
    rank 0 | 0F0 0F1 0F2 3F0 3B0 3W0 3F1 3B1 3W1 0F3 0B0 0W0 3F2 3B2 3W2 0B1 0W1 3F3 3B3 0B2 3W3 0B3 0W2 0W3
    rank 1 | 1F0 2F0 1F1 2F1 2B0 2W0 1F2 1B0 1W0 2F2 2B1 2W1 1F3 1B1 1W1 2F3 2B2 1B2 2B3 1B3 2W2 1W2 2W3 1W3
"""

from __future__ import annotations

from collections.abc import Callable

from pipeblocks.blocks import BlockPass, BuildingBlock, build
from pipeblocks.generators.registry import register
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["v_block", "v_min_block", "v_half_block", "v_zb_block"]

PERIOD = 6
"""Slots per microbatch on a V rank: F, B and W of its two chunks, one slot each."""

_SOURCE = "Qi, Wan, Amar, Lin 2024, Pipeline Parallelism with Controllable Memory, arXiv 2405.15362"

Offset = Callable[[int], int]


def v_block(num_ranks: int, f0: Offset, f1: Offset, b1: Offset, b0: Offset) -> BuildingBlock:
    """A V-placement block from the slot of each rank's F(chunk 0), F(chunk 1), B(chunk 1), B(chunk 0).

    Each argument maps a rank i to a slot of microbatch 0 (chunk 0 of rank i is stage i,
    chunk 1 is stage 2p-1-i). W's are left open for :func:`pipeblocks.blocks.fill_w`.

    >>> print(v_block(2, lambda i: i, lambda i: 3 - i, lambda i: 4 + i, lambda i: 7 - i))
    rank 0 | 0F 0B  . 3F 3B  .
    rank 1 | 1B 1F 2F  .  . 2B
    """
    p = num_ranks
    passes = []
    for i in range(p):
        s0, s1 = i, 2 * p - 1 - i
        passes += [
            BlockPass(s0, Pass.F, f0(i)),
            BlockPass(s1, Pass.F, f1(i)),
            BlockPass(s1, Pass.B, b1(i)),
            BlockPass(s0, Pass.B, b0(i)),
        ]
    return BuildingBlock(p, PERIOD, tuple(passes), stages_per_rank=2, placement=Placement.V)


def v_min_block(num_ranks: int) -> BuildingBlock:
    """V-Min's block (δ0, δ1) = (1, 1): slots i, 2p-1-i, 2p+I+i, 4p+I-1-i with I = 2 if 3 | p.

    When 3 divides p, 2p is a multiple of 6 and B(chunk 1) at 2p+i would land on F(chunk 0)'s
    slot i modulo 6: the offset I moves it (and B(chunk 0)) two slots on.

    >>> print(v_min_block(3))
    rank 0 | 0F 0B 5B  .  . 5F
    rank 1 | 1B 1F  . 4B 4F  .
    rank 2 |  .  . 2F 3F 3B 2B
    """
    p = num_ranks
    extra = 2 if p % 3 == 0 else 0
    return v_block(
        p,
        lambda i: i,
        lambda i: 2 * p - 1 - i,
        lambda i: 2 * p + extra + i,
        lambda i: 4 * p + extra - 1 - i,
    )


def v_half_block(num_ranks: int) -> BuildingBlock:
    """V-Half's block (δ0, δ1) = (2, 1): slots 2i, 3p-2-i, 3p+I-1+2i, 6p+I-2-i with I = 3 if 2 | p.

    B(chunk 0) sits 3p+I slots after F(chunk 1); when p is even 3p is a multiple of 6, so
    without I = 3 the two would share a slot modulo 6.

    >>> print(v_half_block(2))
    rank 0 | 0F 0B 3B  . 3F  .
    rank 1 | 1B  . 1F 2F 2B  .
    """
    p = num_ranks
    extra = 3 if p % 2 == 0 else 0
    return v_block(
        p,
        lambda i: 2 * i,
        lambda i: 3 * p - 2 - i,
        lambda i: 3 * p + extra - 1 + 2 * i,
        lambda i: 6 * p + extra - 2 - i,
    )


def v_zb_block(num_ranks: int) -> BuildingBlock:
    """V-ZB's block (δ0, δ1) = (4, 2): slots 4i, 6p-3-2i, 6p-2+4i, 12p-5-2i.

    Modulo 6 every rank runs F(chunk 0), B(chunk 0), _, F(chunk 1), B(chunk 1), _ from its
    first F, shifted by 4i; the filled W's take the gaps right after their B's (ZB-V's stable
    pattern F0 B0 W0 F1 B1 W1). Chunk 0 lives 12p-3-6i slots and chunk 1 6i+3: 12p in all per
    rank, 2p activations on average, exactly 1F1B's peak.

    >>> print(v_zb_block(2))
    rank 0 | 0F 0B  . 3F 3B  .
    rank 1 |  . 2F 2B  . 1F 1B
    """
    p = num_ranks
    return v_block(
        p,
        lambda i: 4 * i,
        lambda i: 6 * p - 3 - 2 * i,
        lambda i: 6 * p - 2 + 4 * i,
        lambda i: 12 * p - 5 - 2 * i,
    )


@register(
    "v-min",
    placement=Placement.V,
    stages_per_rank=2,
    fixed_stages_per_rank=True,
    summary="CM building block V-Min: about 1/3 of 1F1B's activation memory",
    source=_SOURCE,
)
def v_min(spec: PipelineSpec) -> Schedule:
    """V-Min: peak floor((p+4)/3)/p of 1F1B's, bubble about 2/3 of 1F1B's (any p, m >= 1).

    >>> print(v_min(PipelineSpec(2, 2, 2, "v")))
    rank 0 | 0F0 3F0 3B0 3W0 0F1 0B0 0W0 3F1 3B1 3W1 0B1 0W1
    rank 1 | 1F0 2F0 2B0 1B0 1F1 2F1 2W0 1W0 2B1 1B1 2W1 1W1
    """
    return build(v_min_block(spec.num_ranks), spec.num_microbatches)


@register(
    "v-half",
    placement=Placement.V,
    stages_per_rank=2,
    fixed_stages_per_rank=True,
    summary="CM building block V-Half: about 1/2 of 1F1B's activation memory",
    source=_SOURCE,
)
def v_half(spec: PipelineSpec) -> Schedule:
    """V-Half: peak floor((p+2)/2)/p of 1F1B's, bubble about half of 1F1B's (any p, m >= 1).

    >>> print(v_half(PipelineSpec(2, 2, 2, "v")))
    rank 0 | 0F0 0F1 3F0 3B0 3F1 3B1 0B0 3W0 0B1 3W1 0W0 0W1
    rank 1 | 1F0 2F0 1F1 2F1 2B0 1B0 2B1 1B1 2W0 1W0 2W1 1W1
    """
    return build(v_half_block(spec.num_ranks), spec.num_microbatches)


@register(
    "v-zb",
    placement=Placement.V,
    stages_per_rank=2,
    fixed_stages_per_rank=True,
    summary="CM building block V-ZB: zero bubble at 1F1B's activation memory",
    source=_SOURCE,
)
def v_zb(spec: PipelineSpec) -> Schedule:
    """V-ZB: 1F1B's peak; zero bubble (paper metric) when m >= 2p (any p, m >= 1).

    >>> print(v_zb(PipelineSpec(2, 2, 2, "v")))
    rank 0 | 0F0 0F1 3F0 3B0 3W0 3F1 3B1 0B0 3W1 0B1 0W0 0W1
    rank 1 | 1F0 2F0 1F1 2F1 2B0 1B0 2W0 2B1 1B1 1W0 2W1 1W1
    """
    return build(v_zb_block(spec.num_ranks), spec.num_microbatches)
