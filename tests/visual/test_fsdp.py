"""FSDP2 pictures: unshard / reduce_grad / reshard beside the passes, parameter memory."""

from __future__ import annotations

import pytest

from pipeblocks.generators import generate
from pipeblocks.sim.collectives import Link, Network
from pipeblocks.sim.costs import UniformCosts
from pipeblocks.sim.fsdp import simulate_fsdp
from pipeblocks.visual.fsdp import fsdp_figure, fsdp_trace

NET = Network(gpus_per_node=8, intra=Link(1e9), inter=Link(1e9))


def _sim():
    return simulate_fsdp(generate("v-half", 2, 4), UniformCosts(f=2, b=2, w=2),
                         param_bytes=[2e6, 1e6, 1e6, 3e6], dp=2, network=NET,
                         seconds_per_unit=1e-3)


def test_trace_has_every_op_gather_and_the_memory_peak() -> None:
    sim = _sim()
    events = fsdp_trace(sim)["traceEvents"]
    for rank, comms in enumerate(sim.comms):
        got = [(e["name"], e["ts"], e["dur"]) for e in events
               if e["ph"] == "X" and e["pid"] == rank and e["tid"] == 1]
        assert got == [(f"{c.kind} s{c.stage}", pytest.approx(c.start * 1000),
                        pytest.approx((c.end - c.start) * 1000)) for c in comms]
        kinds = [c.kind for c in comms]
        assert kinds.count("unshard") == kinds.count("reduce_grad") == kinds.count("reshard") == 2
        gathers = [e for e in events if e["ph"] == "X" and e["pid"] == rank
                   and e["name"].startswith("gather")]
        assert len(gathers) == sum(s.gather > 0 for s in sim.spans[rank]) > 0
        peak = max(e["args"]["bytes"] for e in events
                   if e["ph"] == "C" and e["pid"] == rank)
        assert peak == pytest.approx(sim.peak_bytes[rank])


def test_figure_draws_and_saves(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    fig = fsdp_figure(_sim(), tmp_path / "fsdp.png")
    assert (tmp_path / "fsdp.png").stat().st_size > 1000
    assert len(fig.axes) == 2
