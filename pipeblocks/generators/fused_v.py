"""1F1B-V: 1F1B's fused backward on the V placement, at about 2/3 of 1F1B's memory.

Our own design, built the way the building blocks of Qi et al. 2024 (Pipeline Parallelism with
Controllable Memory; docs/design.md, "Lifespan and the peak bound") are: place one
microbatch's passes, repeat the placement every T slots, and let each rank run its passes in
slot order.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> v, classic = (simulate(generate(name, 7, 14)) for name in ("1f1b-v", "1f1b"))
    >>> v.peak_fraction == 5 / 7, v.bubble_rate == classic.bubble_rate
    (True, True)
"""

from __future__ import annotations

from pipeblocks.errors import SpecError
from pipeblocks.generators.registry import register
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["fused_v", "fused_v_block"]

# Slots: a chunk's F takes 1 slot and its fused BW 2 (F = B = W per chunk), so one microbatch
# is T = 6 slots of work on every rank.
_PERIOD = 6
_F_SLOTS, _BW_SLOTS = 1, 2


def _fits(free: frozenset[int], lengths: tuple[int, ...]) -> bool:
    """Can runs of these lengths still tile disjoint cyclic intervals of the free slots?"""
    if not lengths:
        return True
    for start in range(_PERIOD):
        cells = frozenset((start + k) % _PERIOD for k in range(lengths[0]))
        if cells <= free and _fits(free - cells, lengths[1:]):
            return True
    return False


def fused_v_block(num_ranks: int) -> tuple[tuple[int, int, int, int], ...]:
    """Start slots ``(F(s0), F(s1), BW(s1), BW(s0))`` of microbatch 0 on each rank.

    The passes are placed in dependency order (F down the ranks on chunk 0, back up on chunk
    1, then BW the same way), each at the earliest slot that (a) follows the end of the pass it
    depends on and (b) occupies slots that, modulo T = 6, are free on its rank and leave room for
    that rank's passes still to place. The repeated block therefore never collides.

    >>> fused_v_block(3)
    ((0, 5, 7, 27), (1, 4, 11, 20), (2, 3, 16, 18))
    """
    p = num_ranks
    free = [frozenset(range(_PERIOD))] * p
    # Per rank the passes are placed in the order F(s0), F(s1), BW(s1), BW(s0); what each
    # placement must leave room for is the rest of that list.
    rest = ((_F_SLOTS, _BW_SLOTS, _BW_SLOTS), (_BW_SLOTS, _BW_SLOTS), (_BW_SLOTS,), ())
    slots = [[0, 0, 0, 0] for _ in range(p)]
    ready = 0  # the end slot of the pass placed last: the dependency of the next one
    chain = [(r, 0, _F_SLOTS) for r in range(p)]  # F(s0), rank 0 -> p-1
    chain += [(r, 1, _F_SLOTS) for r in reversed(range(p))]  # F(s1), turn on p-1, up to 0
    chain += [(r, 2, _BW_SLOTS) for r in range(p)]  # BW(s1), loss on rank 0, down to p-1
    chain += [(r, 3, _BW_SLOTS) for r in reversed(range(p))]  # BW(s0), back up to rank 0
    for rank, which, length in chain:
        t = ready
        while True:  # at most T tries: every residue is looked at once
            cells = frozenset((t + k) % _PERIOD for k in range(length))
            if cells <= free[rank] and _fits(free[rank] - cells, rest[which]):
                break
            t += 1
        free[rank] -= cells
        slots[rank][which] = t
        ready = t + length
    return tuple((a, b, c, d) for a, b, c, d in slots)


@register(
    "1f1b-v",
    placement=Placement.V,
    stages_per_rank=2,
    summary="1F1B's fused backward on the V placement, about 2/3 of 1F1B's memory",
    source="pipeblocks (a building block after Qi et al. 2024, Controllable Memory)",
)
def fused_v(spec: PipelineSpec) -> Schedule:
    """1F1B-V: the block of :func:`fused_v_block` repeated every 6 slots, run in slot order.

    Rank r holds s0 = r and s1 = 2p-1-r. Passes of microbatch j start 6·j slots after
    microbatch 0's; each rank's program lists its passes by start slot, so the timed block is a
    witness that the programs execute (no dependency is broken, no rank runs two passes at
    once). Under unit costs and unit memory, for every m >= 1 (tested for p <= 16):

    - peak: min(2m, 2·ceil((2p+1)/3)) chunk-activations, i.e. ceil((2p+1)/3)/p of 1F1B's once
      m is large: 1 at p <= 3, 3/4 at p = 4, 5/6 at p = 6, 5/7 at p = 7, 11/16 at p = 16,
      tending to 2/3;
    - bubble time (paper metric): 1F1B's 3(p-1) plus min((p-1) mod 3, m-1)/2, the detours
      of the block (one slot is a chunk's F, T_F/2); none when p mod 3 == 1.

    >>> print(fused_v(PipelineSpec(2, 2, 2, "v")))
    rank 0 |  0F0  3F0 3BW0  0F1  3F1 3BW1 0BW0 0BW1
    rank 1 |  1F0  2F0  1F1  2F1 2BW0 1BW0 2BW1 1BW1
    """
    if spec.placement is not Placement.V:  # the registry checks this; direct calls too
        raise SpecError(
            f"1f1b-v needs placement 'v' (got '{spec.placement.value}'); use "
            f"PipelineSpec(p, m, 2, 'v') or generate('1f1b-v', p, m)"
        )
    p, m = spec.num_ranks, spec.num_microbatches
    block = fused_v_block(p)
    programs = []
    for rank in range(p):
        s0, s1 = rank, 2 * p - 1 - rank
        passes = ((s0, Pass.F), (s1, Pass.F), (s1, Pass.BW), (s0, Pass.BW))  # block order
        # The four start slots are distinct modulo 6, so slot + 6·j is unique per rank:
        # bucket the passes by slot (linear in the number of passes, no sort).
        offsets = block[rank]
        base = min(offsets)
        by_slot: list[Action | None] = [None] * (max(offsets) - base + _PERIOD * m)
        for (stage, kind), start in zip(passes, offsets, strict=True):
            for j in range(m):
                by_slot[start - base + _PERIOD * j] = Action(stage, kind, j)
        programs.append([a for a in by_slot if a is not None])
    return Schedule.from_lists(spec, programs)
