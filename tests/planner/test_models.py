"""Model numbers, collective costs and the cached pipeline runs."""

from __future__ import annotations

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.planner.model import parse_model
from pipeblocks.planner.pipeline import PipelineCache, StageCosts
from pipeblocks.sim.collectives import Link, Network, ring_all_reduce
from pipeblocks.sim.costs_file import PerStageCosts
from pipeblocks.sim.engine import simulate


def test_layer_numbers_meet_the_published_formulas() -> None:
    """With f = 4h and k = a: ZB Table 1 FLOPs and Korthikanti's 34sbh + 5as^2b bytes."""
    m = parse_model("layers=2,hidden=1024,heads=16,seq=512,vocab=1000")
    s, h, a, tokens = 512, 1024, 16, 3 * 512
    f, b, w = m.layer_flops(tokens)
    assert (f, b, w) == (tokens * h * (24 * h + 4 * s), tokens * h * (24 * h + 8 * s),
                         tokens * 24 * h * h)
    assert m.layer_activation(tokens, recompute=False)[0] == tokens * h * 34 + 5 * a * s * tokens
    assert m.layer_activation(tokens, recompute=True) == (2 * tokens * h, 2 * tokens * h)


def test_grouped_query_attention_shrinks_parameters() -> None:
    """Fewer key/value heads: fewer parameters and FLOPs per layer."""
    full = parse_model("layers=2,hidden=1024,heads=16,seq=512,vocab=1000")
    gqa = parse_model("layers=2,hidden=1024,heads=16,seq=512,vocab=1000,kv_heads=4")
    assert gqa.layer_params() < full.layer_params()
    assert gqa.layer_flops(1)[2] < full.layer_flops(1)[2]


def test_model_text_errors_name_the_field() -> None:
    """A missing or unknown key names it."""
    with pytest.raises(SpecError, match="needs vocab"):
        parse_model("layers=2,hidden=64,heads=4,seq=8")
    with pytest.raises(SpecError, match="'depth=2'"):
        parse_model("depth=2")


def test_collectives_follow_the_ring_formula() -> None:
    """All-reduce = 2 (n-1) latency + 2 (n-1)/n bytes / bandwidth; one rank costs nothing."""
    link = Link(1e9, 1e-5)
    assert ring_all_reduce(4e9, 4, link) == pytest.approx(2 * 3 * 1e-5 + 2 * 0.75 * 4.0)
    assert ring_all_reduce(4e9, 1, link) == 0.0
    net = Network(8, intra=Link(100e9), inter=Link(10e9))
    assert net.all_reduce(1e9, 8, stride=1) < net.all_reduce(1e9, 8, stride=2)
    assert net.send(1e6, 3, 4) < net.send(1e6, 7, 8)


@pytest.mark.parametrize("name", ["1f1b", "interleaved-1f1b", "zb-h1", "zb-h2", "v-half",
                                  "v-min", "zb-v"])
def test_extrapolated_step_matches_the_full_simulation(name: str) -> None:
    """Past m = 3p the cache's extrapolation equals simulating every microbatch."""
    p, m = 4, 28
    v = 2 if name in ("interleaved-1f1b", "v-half", "v-min", "zb-v") else 1
    stages = p * v
    costs = StageCosts(
        f=tuple(0.3 + 0.01 * s for s in range(stages)), b=(0.4,) * stages, w=(0.3,) * stages,
        mem_f=(1.0,) * stages, mem_w=(0.5,) * stages, comm=0.05)
    run = PipelineCache().run(name, p, m, costs)
    full = simulate(generate(name, p, m), PerStageCosts(costs.f, costs.b, costs.w, costs.mem_f,
                                                        costs.mem_w, comm=costs.comm))
    assert run is not None
    assert run.makespan == pytest.approx(full.makespan, rel=1e-9)
    assert run.peaks == pytest.approx(full.peak_memory)


def test_a_refused_microbatch_count_is_no_run() -> None:
    """Interleaved needs m % p == 0: the cache says None for m = 4p + 1, also extrapolated."""
    costs = StageCosts.uniform(8, 0.3, 0.4, 0.3)
    assert PipelineCache().run("interleaved-1f1b", 4, 17, costs) is None
    assert PipelineCache().run("interleaved-1f1b", 4, 9, costs) is None
