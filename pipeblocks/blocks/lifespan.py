"""Lifespans, the peak-memory bound of a building block, and exact peaks.

The lifespan of a stage is the time from the start of its F to the end of the pass that frees
its activation: W (the unit memory model holds the whole activation until W, docs/design.md,
"Memory accounting") or BW for a fused backward. Repeated every T slots, a stage is alive for
at most ceil(lifespan / T) microbatches at once, so a rank never holds more than (CM paper,
Qi, Wan, Amar, Lin 2024, arXiv 2405.15362; docs/design.md, "Lifespan and the peak bound")

    peak bound(rank) = sum over its stages of ceil(lifespan / T) * mem_f.

:func:`stable_peak` gives the exact peak of the block repeated forever (the stable phase) and
:func:`layout_peak` the exact peak of a finite layout, both with the simulator's accounting (F
allocates mem_f when it starts; B frees mem_f - mem_w, W frees mem_w and BW frees mem_f when
they end). An open block is W-filled first (:func:`~pipeblocks.blocks.fill.fill_w`).

    >>> from pipeblocks.ir import Pass
    >>> from pipeblocks.blocks.block import BlockPass, BuildingBlock
    >>> block = BuildingBlock(num_ranks=2, period=4, passes=(
    ...     BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
    ...     BlockPass(1, Pass.W, 3), BlockPass(0, Pass.B, 5), BlockPass(0, Pass.W, 6)))
    >>> lifespans(block)
    (7, 3)
    >>> peak_bound(block), stable_peak(block)
    ((2.0, 1.0), (2.0, 1.0))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from pipeblocks.blocks.block import BuildingBlock
from pipeblocks.blocks.fill import fill_w
from pipeblocks.blocks.layout import Layout
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import PipelineSpec

__all__ = [
    "MemoryModel",
    "stage_memory",
    "pass_memory",
    "lifespans",
    "peak_bound",
    "stable_peak",
    "layout_peak",
    "per_rank_caps",
    "cap_tolerance",
]


class MemoryModel(Protocol):
    """Anything with the cost models' ``memory(spec, stage) -> (mem_f, mem_w)`` (e.g.
    :class:`pipeblocks.sim.UniformCosts`)."""

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]: ...


def stage_memory(block: BuildingBlock, costs: MemoryModel | None = None) -> list[tuple[float, float]]:
    """(mem_f, mem_w) per stage; unit memory (1, 1) without ``costs``.

    The cost model is asked with a one-microbatch spec: activation memory per stage does not
    depend on how many microbatches run.
    """
    if costs is None:
        return [(1.0, 1.0)] * block.num_stages
    spec = block.spec(1)
    pairs = (costs.memory(spec, s) for s in range(block.num_stages))
    return [(float(mem_f), float(mem_w)) for mem_f, mem_w in pairs]


def lifespans(block: BuildingBlock) -> tuple[int, ...]:
    """Per stage: slots from its F's start to the end of its W (or BW)."""
    block = fill_w(block)  # a closed block comes back as it is
    out = []
    for s in range(block.num_stages):
        f = block.get(s, Pass.F)
        last = block.frees(s)
        assert f is not None and last is not None
        out.append(last.end - f.offset)
    return tuple(out)


def peak_bound(block: BuildingBlock, costs: MemoryModel | None = None) -> tuple[float, ...]:
    """Per rank: sum over its stages of ceil(lifespan / period) * mem_f (an upper bound)."""
    block = fill_w(block)  # a closed block comes back as it is
    mem = stage_memory(block, costs)
    spans = lifespans(block)
    T = block.period
    spec = block.spec(1)
    return tuple(
        float(sum(-(-spans[s] // T) * mem[s][0] for s in spec.stages_of(r)))
        for r in range(block.num_ranks)
    )


def _alive(start: int, end: int, t: int, period: int) -> int:
    """How many copies k (all integers) of the interval [start + kT, end + kT) contain t."""
    return (t - start) // period - (t - end) // period


def stable_peak(block: BuildingBlock, costs: MemoryModel | None = None) -> tuple[float, ...]:
    """Per rank: the exact peak of the block repeated forever (its stable phase).

    A finite repetition (any number of microbatches) never holds more: it runs a subset of the
    same passes at the same slots.
    """
    block = fill_w(block)  # a closed block comes back as it is
    mem = stage_memory(block, costs)
    T = block.period
    spec = block.spec(1)
    peaks = []
    for r in range(block.num_ranks):
        best = 0.0
        for t in range(T):
            held = 0.0
            for s in spec.stages_of(r):
                f = block.get(s, Pass.F)
                assert f is not None
                bw = block.get(s, Pass.BW)
                mem_f, mem_w = mem[s]
                if bw is not None:
                    held += mem_f * _alive(f.offset, bw.end, t, T)
                else:
                    b, w = block.get(s, Pass.B), block.get(s, Pass.W)
                    assert b is not None and w is not None
                    # until B ends the whole activation is held, then what W still needs.
                    held += mem_f * _alive(f.offset, b.end, t, T)
                    held += mem_w * _alive(b.end, w.end, t, T)
            best = max(best, held)
        peaks.append(best)
    return tuple(peaks)


def pass_memory(
    block: BuildingBlock, costs: MemoryModel | None = None
) -> tuple[list[float], list[float]]:
    """Per pass of the block: what it allocates when it starts and frees when it ends.

    F allocates mem_f; B frees mem_f - mem_w, W frees mem_w and BW frees mem_f.
    """
    mem = stage_memory(block, costs)
    alloc = [mem[bp.stage][0] if bp.kind is Pass.F else 0.0 for bp in block.passes]
    release = [
        {Pass.F: 0.0, Pass.B: mem[bp.stage][0] - mem[bp.stage][1], Pass.W: mem[bp.stage][1],
         Pass.BW: mem[bp.stage][0]}[bp.kind]
        for bp in block.passes
    ]
    return alloc, release


def layout_peak(layout: Layout, costs: MemoryModel | None = None) -> tuple[float, ...]:
    """Per rank: the peak of the layout, which depends only on each rank's order of passes."""
    alloc, release = pass_memory(layout.block, costs)
    n = len(alloc)
    peaks = []
    for rank in range(layout.block.num_ranks):
        held = peak = 0.0
        for key in layout.order(rank):
            op = key % n
            held += alloc[op]  # an F allocates when it starts,
            peak = max(peak, held)
            held -= release[op]  # the others free when they end
        peaks.append(peak)
    return tuple(peaks)


def per_rank_caps(
    limit: float | Sequence[float] | None,
    num_ranks: int,
    default: Callable[[], Sequence[float]],
    who: str,
) -> list[float]:
    """A memory ``limit`` as one cap per rank: a number for every rank, one number per rank,
    or ``default()`` when it is None; ``who`` names the caller in the error for a wrong count."""
    if limit is None:
        return [float(x) for x in default()]
    if isinstance(limit, int | float):
        return [float(limit)] * num_ranks
    caps = [float(x) for x in limit]
    if len(caps) != num_ranks:
        raise SpecError(f"{who} needs one limit per rank ({num_ranks}), got {len(caps)}; give "
                        f"one number for every rank or exactly {num_ranks}")
    return caps


def cap_tolerance(caps: Sequence[float]) -> float:
    """How far over a cap still counts as within it: float rounding, 1e-9 of the largest cap
    (1e-9 at least)."""
    return 1e-9 * max(1.0, *map(abs, caps))
