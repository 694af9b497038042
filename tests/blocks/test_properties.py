"""Property tests on random building blocks: memory bounds, reorder and squeeze."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.blocks import (
    BlockPass,
    BuildingBlock,
    fill_w,
    find_collision,
    layout_peak,
    peak_bound,
    reorder,
    repeat,
    squeeze,
    stable_peak,
)
from pipeblocks.errors import SpecError
from pipeblocks.ir import Pass, PipelineSpec, Placement, validate
from pipeblocks.sim import UniformCosts, simulate


@dataclass(frozen=True)
class SlotCosts:
    """Each pass takes its block duration in slots; no transfer cost; memory from ``mem``."""

    block: BuildingBlock
    mem: tuple[float, float] = (1.0, 1.0)

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        bp = self.block.get(stage, kind)
        return float(bp.duration) if bp is not None else 0.0  # a pass the block does not use

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        return 0.0

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return self.mem


@st.composite
def blocks(draw: st.DrawFn) -> BuildingBlock:
    """A random block that respects every dependency, with a period it repeats cleanly at.

    Passes go in dependency order (F's down, backward passes back up), each at the first slot
    its rank has free after its dependencies plus a random gap; some stages fuse B and W,
    some leave their W to fill, and passes last one or two slots.
    """
    shape = draw(st.sampled_from([(1, Placement.LOOP), (2, Placement.LOOP), (2, Placement.V)]))
    v, placement = shape
    p = draw(st.integers(1, 4))
    spec = PipelineSpec(p, 1, v, placement)
    num_stages = spec.num_stages
    w_duration = draw(st.integers(1, 2))
    busy: dict[int, set[int]] = {r: set() for r in range(p)}
    passes: list[BlockPass] = []

    def put(stage: int, kind: Pass, earliest: int, duration: int) -> BlockPass:
        rank = spec.rank_of(stage)
        t = earliest + draw(st.integers(0, 2))
        while any(u in busy[rank] for u in range(t, t + duration)):
            t += 1
        busy[rank].update(range(t, t + duration))
        bp = BlockPass(stage, kind, t, duration)
        passes.append(bp)
        return bp

    f_end = 0
    f_ends = []
    for s in range(num_stages):
        f_end = put(s, Pass.F, f_end, draw(st.integers(1, 2))).end
        f_ends.append(f_end)
    b_end = 0
    open_load = [0] * p
    for s in reversed(range(num_stages)):
        style = draw(st.sampled_from(["fused", "placed", "open"]))
        earliest = max(f_ends[s], b_end)
        b = put(s, Pass.BW if style == "fused" else Pass.B, earliest, draw(st.integers(1, 2)))
        b_end = b.end
        if style == "placed":
            put(s, Pass.W, b.end, draw(st.integers(1, 2)))
        elif style == "open":
            open_load[spec.rank_of(s)] += w_duration
    lo = min(bp.offset for bp in passes)
    span = max(bp.end for bp in passes) - lo
    load = max(len(busy[r]) + open_load[r] for r in range(p))
    periods = []
    # Beyond span + max(open_load) the passes cannot meet and the W's find a free run; below,
    # try the tightest few periods, where collisions and queued W's are likeliest.
    safe = span + max(open_load) + 1
    for period in sorted({*range(load, min(load + 4, safe)), safe}):
        block = BuildingBlock(p, period, tuple(passes), v, placement, w_duration)
        if find_collision(block) is None:
            try:
                fill_w(block)
            except SpecError:
                continue
            periods.append(period)
    period = draw(st.sampled_from(periods))
    return BuildingBlock(p, period, tuple(passes), v, placement, w_duration)


memories = st.sampled_from([(1.0, 1.0), (2.0, 0.5), (3.0, 3.0), (1.0, 0.0)])


@given(blocks(), st.integers(1, 9), memories)
def test_peak_bound_is_at_least_every_simulated_peak(
    block: BuildingBlock, m: int, mem: tuple[float, float]
) -> None:
    """bound >= stable peak >= the simulated peak of the repeated block, rank by rank."""
    costs = UniformCosts(mem_f=mem[0], mem_w=mem[1])
    bound, stable = peak_bound(block, costs), stable_peak(block, costs)
    layout = repeat(block, m)
    simulated = simulate(squeeze(layout), costs).peak_memory
    assert layout_peak(layout, costs) == simulated
    for r in range(block.num_ranks):
        assert bound[r] >= stable[r] - 1e-9
        assert stable[r] >= simulated[r] - 1e-9


@given(blocks(), memories)
def test_a_long_repetition_reaches_the_stable_peak(
    block: BuildingBlock, mem: tuple[float, float]
) -> None:
    """With enough microbatches the repeated block holds exactly its stable-phase peak."""
    costs = UniformCosts(mem_f=mem[0], mem_w=mem[1])
    closed = fill_w(block)
    span = max(bp.end for bp in closed.passes) - min(bp.offset for bp in closed.passes)
    layout = repeat(block, span // block.period + 3)
    assert layout_peak(layout, costs) == stable_peak(block, costs)


@given(blocks(), st.integers(1, 9), memories)
def test_reorder_keeps_the_limit_and_stays_valid_and_tight(
    block: BuildingBlock, m: int, mem: tuple[float, float]
) -> None:
    """Reordered: within each rank's stable peak, a valid schedule, every pass as early as its
    rank order and dependencies allow (list execution with slot costs reproduces the slots)."""
    costs = UniformCosts(mem_f=mem[0], mem_w=mem[1])
    layout = reorder(repeat(block, m), costs=costs)
    stable = stable_peak(block, costs)
    peaks = layout_peak(layout, costs)
    assert all(a <= b + 1e-9 for a, b in zip(peaks, stable, strict=True))
    assert all(a <= b + 1e-9 for a, b in zip(peaks, peak_bound(block, costs), strict=True))
    schedule = squeeze(layout)
    validate(schedule)
    sim = simulate(schedule, SlotCosts(layout.block, mem))
    assert sim.peak_memory == peaks
    for rank, spans in enumerate(sim.spans):
        order = layout.order(rank)
        assert [sp.start for sp in spans] == [float(layout.starts[k]) for k in order]


@given(blocks(), st.integers(1, 9))
def test_reorder_under_a_uniform_limit(block: BuildingBlock, m: int) -> None:
    """With one limit for all ranks (the highest stable peak) no rank goes above it."""
    top = max(stable_peak(block))
    layout = reorder(repeat(block, m), limit=top)
    assert max(layout_peak(layout)) <= top
    validate(squeeze(layout))


@given(blocks(), st.integers(1, 9))
def test_squeeze_lists_each_rank_in_slot_order(block: BuildingBlock, m: int) -> None:
    """Squeezed programs (bucketed by slot) equal the layout's own slot order, rank by rank,
    before and after reorder."""
    for layout in (repeat(block, m), reorder(repeat(block, m))):
        schedule = squeeze(layout)
        for rank in range(block.num_ranks):
            assert list(schedule.programs[rank]) == layout.actions(rank)
