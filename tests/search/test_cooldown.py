"""The tight cool-down: what it keeps, the chains it builds, the bound it reaches, its errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pipeblocks.blocks import BlockPass, BuildingBlock, reorder, repeat, squeeze
from pipeblocks.errors import SpecError
from pipeblocks.ir import Pass, validate
from pipeblocks.search.cooldown import tight_cooldown
from pipeblocks.search.refill import program_peaks
from pipeblocks.search.vshape import VParams, stable_peaks, v_block_of, v_params, v_times
from pipeblocks.sim import UNIT, simulate
from pipeblocks.sim.tables import tables


def cases(ms):  # type: ignore[no-untyped-def]
    """(p, m, held, layout) for a fixed random sample of V blocks: held is the block's own
    stable peak in activations, as the search uses it."""
    rng = random.Random(5)
    for p in (2, 3, 4, 5, 6, 8):
        points = list(v_params(p))
        for v in rng.sample(points, min(25, len(points))):
            t = v_times(p, v)
            assert t is not None
            one = (1.0,) * (2 * p)
            held = round(max(stable_peaks(p, t, one, one)))
            for m in ms(p):
                yield p, m, held, reorder(repeat(v_block_of(p, v, t), m))


def test_keeps_every_pass_and_the_forward_order() -> None:
    """Each rank runs the same passes, its F's in the same order; every result validates and
    holds at most ``held`` (m from 1 to 4p); and most blocks get a result."""
    made = Counter()
    for _p, _m, held, layout in cases(lambda p: (1, 2, p, 2 * p, 4 * p)):
        s = tight_cooldown(layout, held)
        made[s is not None] += 1
        if s is None:
            continue
        base = squeeze(layout)
        for before, after in zip(base.programs, s.programs, strict=True):
            assert Counter(before) == Counter(after)
            assert [a for a in before if a.kind is Pass.F] == [a for a in after if a.kind is Pass.F]
        validate(s)
        assert max(program_peaks(s, tables(s.spec, UNIT))) <= held
    assert made[True] > made[False]


def test_the_last_microbatch_goes_back_without_a_gap() -> None:
    """The point of the pattern: with a stable phase to start from (m >= 2p), the last
    microbatch's B's run back to back, stage 2p-1 down to stage 0, one slot each."""
    checked = 0
    for p, m, held, layout in cases(lambda p: (2 * p, 4 * p)):
        s = tight_cooldown(layout, held)
        if s is None:
            continue
        sim = simulate(s)
        start = {(sp.action.stage, sp.action.kind, sp.action.mb): sp.start
                 for spans in sim.spans for sp in spans}
        chain = [start[(stage, Pass.B, m - 1)] for stage in range(2 * p - 1, -1, -1)]
        assert [2 * (b - a) for a, b in zip(chain, chain[1:], strict=False)] == [1] * (2 * p - 1)
        checked += 1
    assert checked >= 50


def test_reaches_the_bound_where_the_repeated_block_does_not() -> None:
    """p = 4, m = 16, 5 activations: the block alone idles 10 slots, the paper's bound (and the
    exhaustive optimum, docs/search.md) is 6p - 1 - 3k = 8, and the tight cool-down gets 8."""
    p, m, k = 4, 16, 5
    layout = reorder(repeat(v_block_of(p, VParams(3, 4, 5, 1, 1, 3)), m))
    work = 6 * m  # slots of work per rank
    assert 2 * max(simulate(squeeze(layout)).span) - work == 10
    s = tight_cooldown(layout, k)
    assert s is not None
    assert 2 * max(simulate(s).span) - work == 8 == 6 * p - 1 - 3 * k


def test_errors_name_the_rule() -> None:
    """A block that is not V, or held < 1: SpecErrors that say what is needed."""
    loop = BuildingBlock(num_ranks=2, period=6, passes=(
        BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
        BlockPass(1, Pass.W, 3), BlockPass(0, Pass.B, 4), BlockPass(0, Pass.W, 5)))
    with pytest.raises(SpecError, match="needs a V block"):
        tight_cooldown(repeat(loop, 4), 2)
    layout = reorder(repeat(v_block_of(2, VParams(1, 2, 3, 1, 1, 1)), 4))
    with pytest.raises(SpecError, match=r"held >= 1 \(got 0\)"):
        tight_cooldown(layout, 0)
