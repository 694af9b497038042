"""The simulated data-parallel step: reductions after the last W, ring costs, links."""

from __future__ import annotations

import pytest

from pipeblocks.generators import generate
from pipeblocks.ir.actions import Pass
from pipeblocks.sim.collectives import Link, Network
from pipeblocks.sim.costs import UniformCosts
from pipeblocks.sim.hybrid import simulate_data_parallel

NET = Network(gpus_per_node=2, intra=Link(1e10, 1e-6), inter=Link(1e8, 1e-5))


@pytest.mark.parametrize("name", ["1f1b", "zb-h1", "v-half"])
def test_each_reduction_starts_after_the_stage_last_weight_pass(name: str) -> None:
    """start >= end of the stage's last W/BW; duration is the ring all-reduce's."""
    s = generate(name, num_ranks=2, num_microbatches=4)
    got = simulate_data_parallel(s, UniformCosts(f=1, b=1, w=1), grad_bytes=4e6, dp=2,
                                 network=NET, seconds_per_unit=1e-3)
    ring_ms = (2 * 1e-5 + 2 * 0.5 * 4e6 / 1e8) * 1e3  # dp ranks pp apart: inter-node
    for rank, reds in enumerate(got.reductions):
        assert sorted(r.stage for r in reds) == sorted(s.spec.stages_of(rank))
        for r in reds:
            last = max(sp.end for sp in got.base.spans[rank]
                       if sp.action.stage == r.stage and sp.action.kind in (Pass.W, Pass.BW))
            assert r.start >= last
            assert r.end - r.start == pytest.approx(ring_ms)
    assert got.makespan == pytest.approx(max(r.end for reds in got.reductions for r in reds))
    assert got.exposed > 0


def test_intra_node_reductions_are_cheaper() -> None:
    """dp groups inside one node use the fast link: less exposed time."""
    s = generate("1f1b", num_ranks=2, num_microbatches=4)
    costs = UniformCosts(f=1, b=1, w=1)
    inter = simulate_data_parallel(s, costs, grad_bytes=4e6, dp=2, network=NET,
                                   seconds_per_unit=1e-3)
    big = Network(gpus_per_node=8, intra=NET.intra, inter=NET.inter)
    intra = simulate_data_parallel(s, costs, grad_bytes=4e6, dp=2, network=big,
                                   seconds_per_unit=1e-3)
    assert intra.exposed < inter.exposed
