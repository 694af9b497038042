"""Tensor-parallel all-reduces charged in the simulated passes: closed forms and links."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir.actions import Pass
from pipeblocks.sim import UniformCosts, simulate
from pipeblocks.sim.collectives import Link, Network
from pipeblocks.sim.tensor_parallel import TensorParallelCosts, tp_pass_time

NET = Network(gpus_per_node=4, intra=Link(1e10, 1e-6), inter=Link(1e8, 1e-5))


@pytest.mark.parametrize("tp,link", [(2, NET.intra), (4, NET.intra), (8, NET.inter)])
def test_pass_time_is_two_ring_all_reduces_per_block(tp: int, link: Link) -> None:
    """2 * blocks * (2 (n-1) a + 2 (n-1)/n B / bw), on the intra-node link while tp fits."""
    nbytes, blocks = 3e6, 5
    ring = 2 * (tp - 1) * link.latency + 2 * (tp - 1) / tp * nbytes / link.bandwidth
    assert tp_pass_time(nbytes, tp=tp, network=NET, blocks=blocks) == pytest.approx(
        2 * blocks * ring)
    assert tp_pass_time(nbytes, tp=1, network=NET, blocks=blocks) == 0.0


@given(name=st.sampled_from(["gpipe", "1f1b", "zb-h1", "zb-h2"]),
       f=st.integers(1, 5), b=st.integers(1, 5), w=st.integers(1, 5), e=st.integers(0, 4),
       p=st.integers(2, 4), m=st.integers(4, 8))
def test_extra_time_on_f_and_b_equals_slower_uniform_passes(
        name: str, f: int, b: int, w: int, e: int, p: int, m: int) -> None:
    """One stage per rank: adding e to every F, B and BW (W untouched) is the schedule under
    UniformCosts(f + e, b + e, w), makespan and every span."""
    s = generate(name, num_ranks=p, num_microbatches=m)
    got = simulate(s, TensorParallelCosts(UniformCosts(f=f, b=b, w=w), extra=[e] * p))
    want = simulate(s, UniformCosts(f=f + e, b=b + e, w=w))
    assert got.makespan == want.makespan
    assert got.spans == want.spans


def test_only_f_b_and_bw_pay_and_stages_are_counted() -> None:
    s = generate("zb-h1", num_ranks=2, num_microbatches=4)
    costs = TensorParallelCosts(UniformCosts(f=1, b=1, w=1), extra=[0.5, 2.0])
    assert [costs.pass_time(s.spec, 1, k) for k in Pass] == [3.0, 3.0, 1.0, 4.0]
    with pytest.raises(SpecError, match="one per stage"):
        TensorParallelCosts(UniformCosts(), extra=[1.0]).pass_time(s.spec, 0, Pass.F)
    with pytest.raises(SpecError, match=">= 0"):
        TensorParallelCosts(UniformCosts(), extra=[-1.0, 0.0])


def test_with_data_parallel_the_passes_pay_tp_and_the_reductions_follow() -> None:
    """simulate_data_parallel over TensorParallelCosts: its pipeline step is the tp-charged
    one, and each reduction (dp groups pp * tp apart) still starts after its last W/BW."""
    from pipeblocks.sim.hybrid import simulate_data_parallel

    s = generate("1f1b", num_ranks=2, num_microbatches=4)
    costs = TensorParallelCosts(UniformCosts(f=1, b=1, w=1), extra=[0.5, 0.5])
    got = simulate_data_parallel(s, costs, grad_bytes=4e6, dp=2, network=NET, tp=2,
                                 seconds_per_unit=1e-3)
    assert got.base.makespan == simulate(s, UniformCosts(f=1.5, b=1.5, w=1)).makespan
    ring_ms = (2 * 1e-5 + 2 * 0.5 * 4e6 / 1e8) * 1e3  # 2 ranks 4 apart: inter-node
    for reds in got.reductions:
        for r in reds:
            assert r.end - r.start == pytest.approx(ring_ms)
    assert got.makespan > got.base.makespan
