"""The simulated FSDP2 step: unshard waits, re-gathers, reduce-scatters and parameter memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir.actions import Pass
from pipeblocks.sim.collectives import Link, Network
from pipeblocks.sim.costs import UniformCosts
from pipeblocks.sim.fsdp import simulate_fsdp

NET = Network(gpus_per_node=2, intra=Link(1e10, 1e-6), inter=Link(1e8, 1e-5))
COSTS = UniformCosts(f=1, b=1, w=1)


def _sim(name: str, dp: int = 2, raf: bool = True, nbytes: float = 4e6, m: int = 4):
    return simulate_fsdp(generate(name, num_ranks=2, num_microbatches=m), COSTS,
                         param_bytes=nbytes, dp=dp, network=NET, seconds_per_unit=1e-3,
                         reshard_after_forward=raf)


@pytest.mark.parametrize("name", ["1f1b", "zb-h1", "v-half", "zb-v"])
@pytest.mark.parametrize("raf", [True, False])
def test_passes_wait_for_unshard_and_reductions_follow_the_last_backward(name: str,
                                                                         raf: bool) -> None:
    sim = _sim(name, raf=raf)
    gather_ms = (1e-5 + 0.5 * 4e6 / 1e8) * 1e3  # ring all-gather, dp 2 two ranks apart: inter
    v = generate(name, 2, 4).spec.num_stages / 2  # stages per rank
    for spans, comms in zip(sim.spans, sim.comms, strict=True):
        for c in comms:
            if c.kind == "unshard":
                first = next(x for x in spans if x.action.stage == c.stage and x.start >= c.start)
                assert first.start >= c.end
                assert c.end - c.start == pytest.approx(gather_ms)
            if c.kind == "reduce_grad":
                last = max(x.end for x in spans if x.action.stage == c.stage
                           and x.action.kind is not Pass.F)
                assert c.start >= last
        for x in spans:  # FSDP2 runs the fused backward in B: W takes no time
            assert x.end - x.start == pytest.approx(
                {Pass.F: 1.0, Pass.W: 0.0}.get(x.action.kind, 2.0) / v + x.gather)
            assert x.gather in (0.0, pytest.approx(gather_ms))
    assert sim.makespan >= max(x.end for spans in sim.spans for x in spans)


@settings(max_examples=20, deadline=None)
@given(dp=st.integers(1, 8), nbytes=st.floats(1.0, 1e9), m=st.integers(2, 6))
def test_one_stage_per_rank_peak_is_shard_plus_gathered_plus_unsharded_grad(
        dp: int, nbytes: float, m: int) -> None:
    """1f1b: the peak is P/dp + P (gathered in the backward) + P (its unsharded gradient), with
    or without reshard-after-forward (one stage per rank); the step ends with P/dp + P/dp."""
    for raf in (True, False):
        sim = _sim("1f1b", dp=dp, raf=raf, nbytes=nbytes, m=m)
        for peak, trace in zip(sim.peak_bytes, sim.memory, strict=True):
            assert peak == pytest.approx(nbytes / dp + 2 * nbytes)
            assert trace[-1][1] == pytest.approx(2 * nbytes / dp)


def test_without_reshard_after_forward_fewer_gathers_more_memory() -> None:
    raf, keep = _sim("v-half", raf=True), _sim("v-half", raf=False)
    gathers = [sum(x.gather > 0 for x in spans) for spans in raf.spans]
    assert all(g > k for g, k in zip(gathers, [sum(x.gather > 0 for x in spans)
                                                for spans in keep.spans], strict=True))
    assert all(k >= r for k, r in zip(keep.peak_bytes, raf.peak_bytes, strict=True))
    assert keep.makespan < raf.makespan


def test_param_bytes_per_stage_must_match() -> None:
    with pytest.raises(SpecError, match="one number per stage"):
        simulate_fsdp(generate("1f1b", 2, 4), COSTS, param_bytes=[1.0, 2.0, 3.0], dp=2,
                      network=NET)
