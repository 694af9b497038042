"""Remove warm-up and cool-down bubbles of a repeated block without raising its peak.

A repeated block runs its stable pattern from the first microbatch to the last, so the ranks
idle while the pipeline fills (warm-up) and drains (cool-down). :func:`reorder` closes those
gaps in two steps (docs/design.md, "Generation rules"; the CM paper, Qi, Wan, Amar, Lin 2024, arXiv
2405.15362, reorders the same two phases):

1. **Pull forward.** In slot order, every pass moves to the earliest free slot of its rank at or
   after the end of its dependencies. Moving an F earlier makes its rank hold that activation
   longer, so an F only moves while the rank's memory stays within the limit on every slot it
   crosses (by default the block's stable-phase peak,
   :func:`~pipeblocks.blocks.lifespan.stable_peak`); B, W and BW only free memory, so they
   always may. No pass lands later than it was, so the result is a valid timed layout whenever
   the input is: nothing can deadlock.
2. **Cool-down.** After a rank's last F its memory can only fall, whatever the order of what is
   left. There the rank runs a B (or BW) as soon as one is ready (the earliest in slot order
   when several are) and fills each slot where none is ready with the oldest pending W (the
   note "W deferral" in :mod:`pipeblocks.ir`): the B's carry the gradient chain to the other
   ranks, the W's are the rank's own work and hold nobody up. The new cool-down is kept only
   if no rank ends later than before (a W longer than one slot can delay a B).

    >>> from pipeblocks.ir import Pass
    >>> from pipeblocks.blocks.block import BlockPass, BuildingBlock
    >>> from pipeblocks.blocks.layout import repeat
    >>> block = BuildingBlock(num_ranks=2, period=4, passes=(
    ...     BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 2), BlockPass(1, Pass.B, 3),
    ...     BlockPass(1, Pass.W, 4), BlockPass(0, Pass.B, 6), BlockPass(0, Pass.W, 7)))
    >>> print(repeat(block, 3))
    rank 0 | F0  .  .  . F1  . B0 W0 F2  . B1 W1  .  . B2 W2
    rank 1 |  .  . F0 B0 W0  . F1 B1 W1  . F2 B2 W2
    >>> print(reorder(repeat(block, 3)))
    rank 0 | F0 F1  . B0 W0 F2 B1 W1  . B2 W2
    rank 1 |  . F0 B0 W0 F1 B1 W1 F2 B2 W2
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Sequence

from pipeblocks.blocks.layout import Layout
from pipeblocks.blocks.lifespan import (
    MemoryModel,
    cap_tolerance,
    pass_memory,
    per_rank_caps,
    stable_peak,
)
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass

__all__ = ["reorder"]


def reorder(
    layout: Layout,
    limit: float | Sequence[float] | None = None,
    costs: MemoryModel | None = None,
) -> Layout:
    """Close the warm-up and cool-down gaps of ``layout`` without a rank exceeding ``limit``.

    ``limit`` is the most memory a rank may hold (a number for every rank, or one per rank);
    by default each rank's stable-phase peak (:func:`~pipeblocks.blocks.lifespan.stable_peak`),
    so no rank holds more than it does in the block's stable phase (pass
    ``max(stable_peak(block))`` to let every rank rise to the highest one). ``costs`` gives
    (mem_f, mem_w) per stage (unit memory by default). A limit the layout itself does not
    keep is an error (:class:`~pipeblocks.errors.SpecError`). The result is tight: every pass
    starts as soon as its rank's previous pass and its dependencies allow.
    """
    block = layout.block
    p = block.num_ranks
    caps = per_rank_caps(limit, p, lambda: stable_peak(block, costs), "reorder")
    state = _State(layout, caps, costs)
    state.pull_forward()
    state.cool_down()
    return Layout(block, layout.num_microbatches, tuple(state.pos))


class _State:
    """Integer bookkeeping for one reorder: pass key = mb * len(block.passes) + op."""

    def __init__(self, layout: Layout, caps: list[float], costs: MemoryModel | None) -> None:
        block = layout.block
        ops = block.passes
        self.n_ops = n = len(ops)
        self.p = block.num_ranks
        self.m = layout.num_microbatches
        self.caps = caps
        self.alloc, self.release = pass_memory(block, costs)
        index = {(bp.stage, bp.kind): i for i, bp in enumerate(ops)}
        self.dur = [bp.duration for bp in ops]
        self.rank_op = list(block.pass_ranks)
        self.ops_of = [[op for op in range(n) if self.rank_op[op] == r] for r in range(self.p)]
        self.is_f = [bp.kind is Pass.F for bp in ops]
        self.is_b = [bp.kind in (Pass.B, Pass.BW) for bp in ops]
        self.deps = [[index[(d.stage, d.kind)] for d in block.deps(bp)] for bp in ops]
        # The B (or BW) that waits for this B, and the W that waits for it.
        self.next_b: list[int | None] = [None] * n
        self.w_of: list[int | None] = [None] * n
        for i, bp in enumerate(ops):
            if self.is_b[i]:
                below = bp.stage - 1
                if below >= 0:
                    self.next_b[i] = index.get((below, Pass.B), index.get((below, Pass.BW)))
                self.w_of[i] = index.get((bp.stage, Pass.W))
        self.pos = list(layout.starts)
        self.src = layout
        self.eps = cap_tolerance(caps)

    def pull_forward(self) -> None:
        """Rebuild the layout pass by pass in slot order, each at its earliest allowed slot.

        Passes that start before the current one never move again, and those after it still
        sit at or after its slot, so only the rebuilt part matters for where it may go: a hole
        the rebuilt part left on its rank, or the rank's end. Past the end of the rebuilt part
        a rank's memory is constant (``held``), which makes the common case O(1).
        """
        n, pos, dur, deps, rank_op = self.n_ops, self.pos, self.dur, self.deps, self.rank_op
        alloc, release, is_f, caps, eps = self.alloc, self.release, self.is_f, self.caps, self.eps
        p = self.p
        new = [0] * len(pos)
        end = [0] * p  # first slot after the rank's rebuilt part
        holes: list[list[int]] = [[] for _ in range(p)]  # free slots before `end`, sorted
        busy = [bytearray() for _ in range(p)]
        mem: list[list[float]] = [[] for _ in range(p)]  # held during each slot before `end`
        held = [0.0] * p
        dep_dur = [[(dop, dur[dop]) for dop in deps[op]] for op in range(n)]
        for key in sorted(range(len(pos)), key=pos.__getitem__):
            op = key % n
            r, d = rank_op[op], dur[op]
            base = key - op
            ready = 0
            for dop, dd in dep_dur[op]:
                e = new[base + dop] + dd
                if e > ready:
                    ready = e
            e_r, hl = end[r], holes[r]
            b = ready if ready > e_r else e_r
            if hl and ready < e_r:
                i = bisect_left(hl, ready)
                if i < len(hl) and is_f[op]:
                    # An F moved into a hole holds its activation over [b, e_r) too: b must
                    # follow the last slot there with no room for it. From e_r on the rank
                    # holds `held`; if even that leaves no room, only the end is left (below).
                    room = caps[r] - alloc[op] + eps
                    if held[r] > room:
                        i = len(hl)
                    else:
                        mr, t, stop = mem[r], e_r - 1, hl[i]
                        while t >= stop and mr[t] <= room:
                            t -= 1
                        if t >= stop:
                            i = bisect_left(hl, t + 1)
                row = busy[r]
                while i < len(hl):
                    c = hl[i]
                    if d == 1 or not any(row[c:min(c + d, e_r)]):
                        b = c
                        break
                    i += 1
            if b > pos[key]:  # a valid input has room for every pass at its own slot
                raise SpecError(
                    f"reorder needs a valid timed layout: {self.src.action(key)} on rank {r} "
                    f"starts at slot {pos[key]} but its rank or its dependencies are busy "
                    f"until {b}; build layouts with repeat()"
                )
            new[key] = b
            if b < e_r and d == 1:  # one slot into hole hl[i]: the quick case of _place
                del hl[i]
                busy[r][b] = 1
                mr = mem[r]
                plus, minus = alloc[op], release[op]
                if plus:
                    mr[b:e_r] = [v + plus for v in mr[b:e_r]]
                if minus:
                    mr[b + 1:e_r] = [v - minus for v in mr[b + 1:e_r]]
                held[r] += plus - minus
                continue
            if b >= e_r:  # the common case: append at the rank's end (after an idle gap)
                h, mr, row = held[r], mem[r], busy[r]
                if b > e_r:
                    mr.extend([h] * (b - e_r))
                    row.extend(bytes(b - e_r))
                    hl.extend(range(e_r, b))
                h += alloc[op]
                if h > caps[r] + eps:
                    # Never for a repeated block under its stable peak: at its input slot the
                    # F had at least as much held before it as it has here.
                    raise SpecError(
                        f"reorder limit {caps[r]:g} on rank {r} is below what the layout holds "
                        f"there (at least {h:g} when {self.src.action(key)} starts); raise the "
                        f"limit to at least {h:g}"
                    )
                if d == 1:
                    mr.append(h)
                    row.append(1)
                else:
                    mr.extend([h] * d)
                    row.extend(b"\x01" * d)
                held[r] = h - release[op]
                end[r] = b + d
            else:
                self._place(r, b, d, alloc[op], release[op], end, holes, busy, mem, held)
        self.pos = new

    @staticmethod
    def _place(
        r: int, b: int, d: int, plus: float, minus: float, end: list[int],
        holes: list[list[int]], busy: list[bytearray], mem: list[list[float]], held: list[float],
    ) -> None:
        """Occupy slots [b, b+d) of rank r: +plus from b on, -minus from b+d on."""
        e = end[r]
        if b + d > e:  # grow the rebuilt part; new slots are idle at the constant `held`
            grow = b + d - e
            mem[r].extend([held[r]] * grow)
            busy[r].extend(bytes(grow))
            holes[r].extend(range(e, b + d))
            end[r] = e = b + d
        busy[r][b:b + d] = b"\x01" * d
        hl = holes[r]
        j = bisect_left(hl, b)
        del hl[j:j + d]
        mr = mem[r]
        if plus:
            mr[b:e] = [v + plus for v in mr[b:e]]
        if minus:
            mr[b + d:e] = [v - minus for v in mr[b + d:e]]
        held[r] += plus - minus

    def cool_down(self) -> None:
        """Past each rank's last F: B's as soon as they are ready, W's in the gaps."""
        n, pos, dur, p = self.n_ops, self.pos, self.dur, self.p
        last_end = [self._end_of(r) for r in range(p)]
        rank_op, is_f, is_b, deps = self.rank_op, self.is_f, self.is_b, self.deps
        # Where each rank's last F ends: from there on its memory only falls.
        tail_from = [0] * p
        for op in range(n):
            if is_f[op]:
                r = rank_op[op]
                tail_from[r] = max(tail_from[r], max(pos[op::n]) + dur[op])
        tail: dict[int, int] = {}  # key -> start before the cool-down
        for op in range(n):
            if not is_f[op]:
                since = tail_from[rank_op[op]]
                for k, start in enumerate(pos[op::n]):
                    if start >= since:
                        tail[k * n + op] = start
        missing: dict[int, int] = {}  # tail B -> its tail dependencies not yet placed
        ready_at: dict[int, int] = {}  # tail B -> when its placed dependencies have ended
        waiting: list[list[tuple[int, int, int]]] = [[] for _ in range(p)]  # (ready, start, key)
        ready: list[list[tuple[int, int]]] = [[] for _ in range(p)]  # (start, key)
        w_pending: list[list[tuple[int, int, int]]] = [[] for _ in range(p)]  # (B end, start, key)
        for key, start in tail.items():
            op = key % n
            base = key - op
            count, at = 0, 0
            for dop in deps[op]:
                if base + dop in tail:
                    count += 1
                else:
                    at = max(at, pos[base + dop] + dur[dop])
            missing[key], ready_at[key] = count, at
            if not count:
                heap = waiting[rank_op[op]] if is_b[op] else w_pending[rank_op[op]]
                heapq.heappush(heap, (at, start, key))
        left = len(tail)
        free_at = list(tail_from)
        t = min(tail_from, default=0)
        while left:
            placed = []
            for r in range(p):
                if free_at[r] > t:
                    continue
                wq, rq = waiting[r], ready[r]
                while wq and wq[0][0] <= t:
                    _, start, key = heapq.heappop(wq)
                    heapq.heappush(rq, (start, key))
                if rq:
                    _, key = heapq.heappop(rq)
                    placed.append(key)
                elif w_pending[r] and w_pending[r][0][0] <= t:
                    _, _, key = heapq.heappop(w_pending[r])
                else:
                    continue
                pos[key] = t
                free_at[r] = t + dur[key % n]
                left -= 1
            for key in placed:
                op = key % n
                base, end = key - op, pos[key] + dur[op]
                nb = self.next_b[op]
                if nb is not None and base + nb in tail:
                    k2 = base + nb
                    missing[k2] -= 1
                    ready_at[k2] = max(ready_at[k2], end)
                    if not missing[k2]:
                        heapq.heappush(waiting[rank_op[nb]], (ready_at[k2], tail[k2], k2))
                w = self.w_of[op]
                if w is not None and base + w in tail:
                    heapq.heappush(w_pending[rank_op[w]], (end, tail[base + w], base + w))
            t += 1
        # A W that takes several slots can hold up a B that becomes ready meanwhile; keep the
        # new cool-down only if no rank ends later than it did (so no span grows either).
        if any(self._end_of(r) > e for r, e in enumerate(last_end)):
            for key, start in tail.items():
                pos[key] = start

    def _end_of(self, rank: int) -> int:
        """The first slot after the rank's last pass."""
        n, pos, dur = self.n_ops, self.pos, self.dur
        return max(max(pos[op::n]) + dur[op] for op in self.ops_of[rank])
