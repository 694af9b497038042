"""The data-parallel trace: reductions on their own thread, at the simulated times."""

from __future__ import annotations

import pytest

from pipeblocks.generators import generate
from pipeblocks.sim.collectives import Link, Network
from pipeblocks.sim.costs import UniformCosts
from pipeblocks.sim.hybrid import simulate_data_parallel
from pipeblocks.visual.hybrid import data_parallel_trace


def test_reductions_are_events_beside_the_passes() -> None:
    """One reduce_grad event per stage on tid 1; times in microseconds of the simulation."""
    net = Network(gpus_per_node=1, intra=Link(1e8), inter=Link(1e8))
    sim = simulate_data_parallel(generate("v-half", 2, 4), UniformCosts(f=1, b=1, w=1),
                                 grad_bytes=2e6, dp=2, network=net, seconds_per_unit=1e-3)
    events = data_parallel_trace(sim)["traceEvents"]
    comm = [e for e in events if e["ph"] == "X" and e["tid"] == 1]
    want = [r for reds in sim.reductions for r in reds]
    assert len(comm) == len(want) == 4
    for e, r in zip(comm, want, strict=True):
        assert e["pid"] == r.rank and e["name"] == f"reduce_grad s{r.stage}"
        assert e["ts"] == pytest.approx(r.start * 1000)
        assert e["dur"] == pytest.approx((r.end - r.start) * 1000)
    passes = [e for e in events if e["ph"] == "X" and e["tid"] == 0]
    assert len(passes) == generate("v-half", 2, 4).num_actions
