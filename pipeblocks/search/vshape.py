"""The V-shape building blocks the search tries: rank 0's pattern, the offsets, the split rank.

The CM paper's adaptive V scheduler (Qi, Wan, Amar, Lin 2024, arXiv 2405.15362, Appendix A;
docs/design.md, "The memory-limited search") builds every block from a few numbers
(:class:`VParams`):

- rank 0's pattern: F(chunk 0) at slot 0 and F(chunk 1), B(chunk 1), B(chunk 0) at distinct
  slots ``f1``, ``b1``, ``b0`` in 1..5, all modulo the period of 6 slots (a rank runs F, B
  and W of two chunks per microbatch, one slot each);
- the offsets between consecutive ranks: chunk-0 F's and chunk-1 B's go down the ranks ``k0``
  slots apart for the first ``split`` steps (ranks 0..split) and ``k1 <= k0`` slots apart after
  that; chunk-1 F's and chunk-0 B's come back up one slot apart (δ1 = 1);
- the turns: each pass starts at the first slot after the pass it waits for that has its
  residue (F(chunk 1) on rank p-1 after F(chunk 0) there, B(chunk 1) on rank 0 after F(chunk
  1), B(chunk 0) on rank p-1 after B(chunk 1)).

A block whose four passes share a residue on some rank collides (it cannot repeat) and is
dropped. Each W takes the first free slot after its B, chunk 1's first or chunk 0's first
(``w_first``; the W's are *filled* greedily into the two gaps each rank has left). The memory of a block repeated forever is
exact and cheap (:func:`stable_peaks`), so blocks over a memory limit are dropped before
anything is built. Larger offsets hold more microbatches in flight: (1, 1) is V-Min's block,
(2, 1) V-Half's and (4, 2) V-ZB's shape.

    >>> v = VParams(f1=1, b1=2, b0=3, k0=3, k1=1, split=2)
    >>> v.label()
    'v(f1=1,b1=2,b0=3,k0=3,k1=1,K=2)'
    >>> print(v_block_of(4, v))
    rank 0 | 0F 7F 7B 0B 7W 0W
    rank 1 | 6F 6W 1B 1F 1W 6B
    rank 2 | 2F 2B 5B 5W 2W 5F
    rank 3 | 3B 3F 3W 4B 4F 4W
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from pipeblocks.blocks import BlockPass, BuildingBlock
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import Placement

__all__ = ["PERIOD", "VParams", "VTimes", "v_params", "v_times", "v_block_of", "stable_peaks"]

PERIOD = 6
"""Slots per microbatch on a V rank: F, B and W of its two chunks."""


@dataclass(frozen=True, slots=True, order=True)
class VParams:
    """One point of the V search space (module docs): rank 0's residues of F(chunk 1),
    B(chunk 1) and B(chunk 0); the offsets ``k0`` (first ``split`` steps down) and ``k1``;
    which chunk's W picks its slot first (``w_first``)."""

    f1: int
    b1: int
    b0: int
    k0: int
    k1: int
    split: int
    w_first: int = 1

    def label(self) -> str:
        """``v(f1=1,b1=2,b0=3,k0=3,k1=1,K=2)``: how the block was made (``,w0`` is added when
        chunk 0's W picks its slot first)."""
        w = "" if self.w_first == 1 else ",w0"
        return (f"v(f1={self.f1},b1={self.b1},b0={self.b0},k0={self.k0},k1={self.k1},"
                f"K={self.split}{w})")


@dataclass(frozen=True, slots=True)
class VTimes:
    """Start slots of microbatch 0's passes, per rank i: F and B of chunk 0 (stage i) and of
    chunk 1 (stage 2p-1-i), and the filled W's."""

    f0: tuple[int, ...]
    f1: tuple[int, ...]
    b1: tuple[int, ...]
    b0: tuple[int, ...]
    w1: tuple[int, ...]
    w0: tuple[int, ...]


def v_params(num_ranks: int) -> Iterator[VParams]:
    """Every point of the search space for p ranks that does not collide, in a fixed order.

    With k1 == k0 the split does not matter, so only ``split = p - 1`` is given. Rank i's
    residues are F0: S_i, B1: b1 + S_i, F1: f1 - i, B0: b0 - i (S_i the sum of the first i
    offsets), so the block collides exactly when some (S_i + i) mod 6 is one of f1, b0,
    f1 - b1 or b0 - b1 (F0 and B1 never meet, nor F1 and B0): one set per offsets, checked
    against every pattern. Each block comes twice, once per ``w_first``.
    """
    p = num_ranks
    patterns = list(itertools.permutations(range(1, PERIOD), 3))
    for k0 in range(1, PERIOD):
        for k1 in range(1, k0 + 1):
            for split in (range(1, p) if k1 < k0 else (max(p - 1, 1),)):
                seen, total = set(), 0
                for i in range(p):
                    seen.add((total + i) % PERIOD)
                    if i < p - 1:
                        total += k0 if i < split else k1
                for f1, b1, b0 in patterns:
                    bad = {f1, b0, (f1 - b1) % PERIOD, (b0 - b1) % PERIOD}
                    if seen.isdisjoint(bad):
                        for w_first in (1, 0):
                            yield VParams(f1, b1, b0, k0, k1, split, w_first)


def _w_gaps(first: int) -> dict[tuple[int, int, int, int], tuple[int, int]]:
    """For the residues (F0, F1, B1, B0) of a rank: how many slots after its B each W starts,
    as (W1's, W0's). The W of chunk ``first`` takes the first free residue after its B, then
    the other W the first free one after its own B."""
    table = {}
    for f0, f1, b1, b0 in itertools.permutations(range(PERIOD), 4):
        taken = {f0, f1, b1, b0}
        gaps = {}
        for chunk, b in ((1, b1), (0, b0)) if first == 1 else ((0, b0), (1, b1)):
            j = next(j for j in range(1, PERIOD) if (b + j) % PERIOD not in taken)
            taken.add((b + j) % PERIOD)
            gaps[chunk] = j
        table[(f0, f1, b1, b0)] = (gaps[1], gaps[0])
    return table


_W_GAPS = {1: _w_gaps(1), 0: _w_gaps(0)}


@lru_cache(maxsize=4096)
def _chain(p: int, k0: int, k1: int, split: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """F(chunk 0)'s slot on each rank and its residue: what the offsets alone decide."""
    f0 = [0] * p
    for i in range(p - 1):
        f0[i + 1] = f0[i] + (k0 if i < split else k1)
    return tuple(f0), tuple(x % PERIOD for x in f0)


def v_times(num_ranks: int, v: VParams) -> VTimes | None:
    """Microbatch 0's slots for ``v`` on p ranks, or None when the block collides."""
    p, T = num_ranks, PERIOD
    f0, f0r = _chain(p, v.k0, v.k1, v.split)
    f1r = [(v.f1 - i) % T for i in range(p)]
    b1r = [(v.b1 + x) % T for x in f0r]
    b0r = [(v.b0 - i) % T for i in range(p)]
    last = p - 1
    top = f0[last] + (f1r[last] - f0r[last]) % T  # the turn: F(chunk 1) after F(chunk 0)
    f1 = [top + last - i for i in range(p)]  # chunk-1 F's come back up one slot apart
    start_b1 = f1[0] + (b1r[0] - f1r[0]) % T
    b1 = [start_b1 + x for x in f0]  # chunk-1 B's go down like chunk-0 F's
    turn = b1[last] + (b0r[last] - b1r[last]) % T
    b0 = [turn + last - i for i in range(p)]
    table = _W_GAPS[v.w_first]
    w1, w0 = [0] * p, [0] * p
    for i in range(p):
        gaps = table.get((f0r[i], f1r[i], b1r[i], b0r[i]))
        if gaps is None:
            return None  # two passes share a residue
        w1[i], w0[i] = b1[i] + gaps[0], b0[i] + gaps[1]
    return VTimes(f0, tuple(f1), tuple(b1), tuple(b0), tuple(w1), tuple(w0))


def v_block_of(num_ranks: int, v: VParams, times: VTimes | None = None) -> BuildingBlock:
    """The closed building block (every W placed) of ``v``; a colliding ``v`` is an error."""
    t = times or v_times(num_ranks, v)
    if t is None:
        raise SpecError(f"{v.label()} collides on {num_ranks} ranks; pick parameters that "
                        f"v_times() accepts")
    p = num_ranks
    passes = []
    for i in range(p):
        s0, s1 = i, 2 * p - 1 - i
        passes += [
            BlockPass(s0, Pass.F, t.f0[i]), BlockPass(s1, Pass.F, t.f1[i]),
            BlockPass(s1, Pass.B, t.b1[i]), BlockPass(s0, Pass.B, t.b0[i]),
            BlockPass(s1, Pass.W, t.w1[i]), BlockPass(s0, Pass.W, t.w0[i]),
        ]
    return BuildingBlock(p, PERIOD, tuple(passes), stages_per_rank=2, placement=Placement.V)


@lru_cache(maxsize=65536)
def _cover(start: int, length: int) -> tuple[int, ...]:
    """How many copies of [start, start + length), repeated every period, cover each residue."""
    q, r = divmod(length, PERIOD)
    out = [q] * PERIOD
    for u in range(r):
        out[(start + u) % PERIOD] += 1
    return tuple(out)


@lru_cache(maxsize=65536)
def _peak(parts: tuple[tuple[int, int, float], ...]) -> float:
    """The most held at any residue by intervals (start residue, length, memory) repeated
    every period. Blocks share many ranks' shapes, hence the cache."""
    covers = [(_cover(start, length), mem) for start, length, mem in parts]
    return max(sum(c[u] * mem for c, mem in covers) for u in range(PERIOD))


def stable_peaks(
    num_ranks: int, t: VTimes, mem_f: tuple[float, ...], mem_w: tuple[float, ...]
) -> tuple[float, ...]:
    """Per rank, the exact peak of the block repeated forever (what
    :func:`pipeblocks.blocks.stable_peak` computes, without building the block): a stage holds
    mem_f from its F's start to its B's end, then mem_w to its W's end."""
    p = num_ranks
    peaks = []
    for i in range(p):
        s0, s1 = i, 2 * p - 1 - i
        f0, f1 = t.f0[i], t.f1[i]
        if mem_w[s0] == mem_f[s0] and mem_w[s1] == mem_f[s1]:  # held from F to W
            key: tuple[tuple[int, int, float], ...] = (
                (f0 % PERIOD, t.w0[i] + 1 - f0, mem_f[s0]),
                (f1 % PERIOD, t.w1[i] + 1 - f1, mem_f[s1]))
        else:
            b0, b1 = t.b0[i], t.b1[i]
            key = ((f0 % PERIOD, b0 + 1 - f0, mem_f[s0]),
                   ((b0 + 1) % PERIOD, t.w0[i] - b0, mem_w[s0]),
                   (f1 % PERIOD, b1 + 1 - f1, mem_f[s1]),
                   ((b1 + 1) % PERIOD, t.w1[i] - b1, mem_w[s1]))
        peaks.append(_peak(key))
    return tuple(peaks)
