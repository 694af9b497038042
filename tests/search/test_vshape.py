"""The V search space: collisions, turns, W filling and stable peaks against the blocks layer."""

from __future__ import annotations

import random

import pytest

from pipeblocks.blocks import check_block, find_collision, stable_peak
from pipeblocks.generators.vblocks import v_half_block, v_min_block
from pipeblocks.ir import Pass
from pipeblocks.search.vshape import PERIOD, VParams, stable_peaks, v_block_of, v_params, v_times


def every_point(p: int):  # type: ignore[no-untyped-def]
    """All of the paper's space, collisions included: patterns, offsets, splits, W order."""
    for f1 in range(1, 6):
        for b1 in range(1, 6):
            for b0 in range(1, 6):
                if len({f1, b1, b0}) < 3:
                    continue
                for k0 in range(1, 6):
                    for k1 in range(1, k0 + 1):
                        for split in range(1, p) if k1 < k0 else (p - 1,):
                            yield VParams(f1, b1, b0, k0, k1, split, 1)


@pytest.mark.parametrize("p", [2, 3, 4, 5, 7])
def test_params_are_exactly_the_blocks_that_repeat(p: int) -> None:
    """v_params yields a point iff its block repeats without collision (checked by the
    blocks layer on the built block), once per W order."""
    listed = {v for v in v_params(p) if v.w_first == 1}
    for v in every_point(p):
        t = v_times(p, v)
        assert (t is not None) == (v in listed), v
    assert len([v for v in v_params(p) if v.w_first == 0]) == len(listed)


@pytest.mark.parametrize("p", [2, 4, 6, 9])
def test_blocks_repeat_and_respect_dependencies(p: int) -> None:
    """Every listed block passes check_block: no collision, every pass after its inputs."""
    for v in v_params(p):
        block = v_block_of(p, v)
        check_block(block)
        assert find_collision(block) is None


def test_offsets_and_turns_follow_the_rules() -> None:
    """Chunk-0 F's and chunk-1 B's go down k0 then k1 apart, the others come up 1 apart, and
    each turn is the first slot with the pass's residue after its input."""
    p, v = 6, VParams(f1=1, b1=2, b0=3, k0=3, k1=1, split=2)
    t = v_times(p, v)
    assert t is not None
    assert [b - a for a, b in zip(t.f0, t.f0[1:], strict=False)] == [3, 3, 1, 1, 1]
    assert [b - a for a, b in zip(t.b1, t.b1[1:], strict=False)] == [3, 3, 1, 1, 1]
    assert [a - b for a, b in zip(t.f1, t.f1[1:], strict=False)] == [1] * (p - 1)
    assert [a - b for a, b in zip(t.b0, t.b0[1:], strict=False)] == [1] * (p - 1)
    assert t.f0[0] % PERIOD == 0 and t.f1[0] % PERIOD == 1
    assert t.b1[0] % PERIOD == 2 and t.b0[0] % PERIOD == 3
    assert 0 < t.f1[-1] - t.f0[-1] <= PERIOD and 0 < t.b0[-1] - t.b1[-1] <= PERIOD


def test_w_order_gives_the_two_ways_to_fill_the_gaps() -> None:
    """w_first=1: chunk 1's W takes the first free slot after its B; w_first=0: chunk 0's."""
    p = 4
    for base in [v for v in v_params(p) if v.w_first == 1][:40]:
        for first in (1, 0):
            v = VParams(base.f1, base.b1, base.b0, base.k0, base.k1, base.split, first)
            t = v_times(p, v)
            assert t is not None
            for i in range(p):
                used = {x % PERIOD for x in (t.f0[i], t.f1[i], t.b1[i], t.b0[i])}
                free = [r for r in range(PERIOD) if r not in used]
                assert sorted([t.w1[i] % PERIOD, t.w0[i] % PERIOD]) == free
                w_b = [(t.w1[i], t.b1[i]), (t.w0[i], t.b0[i])]
                if first == 0:
                    w_b.reverse()
                w, b = w_b[0]
                gap = next(j for j in range(1, PERIOD) if (b + j) % PERIOD in free)
                assert w == b + gap
                assert all(0 < w - b < PERIOD for w, b in w_b)


def test_v_min_and_v_half_are_points_of_the_space() -> None:
    """V-Min's (1, 1) and V-Half's (2, 1) blocks have the F and B slots of a listed point."""
    for p in range(3, 10):
        for make, k in ((v_min_block, 1), (v_half_block, 2)):
            ref = make(p)
            want = {(bp.stage, bp.kind): bp.offset for bp in ref.passes}
            f1 = want[(2 * p - 1, Pass.F)] % PERIOD
            b1 = want[(2 * p - 1, Pass.B)] % PERIOD
            b0 = want[(0, Pass.B)] % PERIOD
            v = VParams(f1, b1, b0, k, k, p - 1)
            assert v in set(v_params(p)), (p, k)
            got = v_block_of(p, v)
            for bp in got.passes:
                if bp.kind is not Pass.W:
                    assert bp.offset == want[(bp.stage, bp.kind)], (p, k, bp)


@pytest.mark.parametrize("p", [2, 3, 5, 8])
def test_stable_peaks_equal_the_blocks_layer(p: int) -> None:
    """The fast stable peak equals blocks.stable_peak, with unit and with random memory."""
    rng = random.Random(p)
    points = list(v_params(p))
    for v in rng.sample(points, min(60, len(points))):
        t = v_times(p, v)
        assert t is not None
        block = v_block_of(p, v, t)
        one = (1.0,) * (2 * p)
        assert stable_peaks(p, t, one, one) == stable_peak(block)
        mem_f = tuple(rng.choice([1.0, 2.0, 3.5]) for _ in range(2 * p))
        mem_w = tuple(x * rng.choice([0.25, 1.0]) for x in mem_f)

        class Memory:
            def __init__(self, f: tuple[float, ...], w: tuple[float, ...]) -> None:
                self.f, self.w = f, w

            def memory(self, spec, stage):  # type: ignore[no-untyped-def]
                return self.f[stage], self.w[stage]

        assert stable_peaks(p, t, mem_f, mem_w) == stable_peak(block, Memory(mem_f, mem_w))
