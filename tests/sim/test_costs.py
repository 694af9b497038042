"""Cost models: costs files, the transformer preset, memory presets, 1F1B's reference peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import Pass, PipelineSpec
from pipeblocks.sim import (
    Machine,
    PerStageCosts,
    TransformerCosts,
    TransformerModel,
    UniformCosts,
    load_costs,
    memory_preset,
    one_f_one_b_peak,
    parse_costs,
    simulate,
    with_memory,
)
from pipeblocks.sim.transformer import layers_of

STAGE = {"f": 1.0, "b": 2.0, "w": 1.0}


def write(tmp_path: Path, obj: object) -> Path:
    """A costs file; a per-stage one states its time unit, as a file must."""
    if isinstance(obj, dict) and "stages" in obj:
        obj = {"time_unit": "ms", **obj}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(obj))
    return path


def test_per_stage_file_round_trip(tmp_path: Path) -> None:
    """A per-stage file gives each stage its own times, memory and the link matrix."""
    path = write(tmp_path, {
        "stages": [{"f": 1, "b": 2, "w": 3, "mem_f": 4, "mem_w": 1}, {"f": 5, "b": 6, "w": 7}],
        "links": [[0, 0.5], [0.25, 0]],
    })
    costs = load_costs(path)
    assert isinstance(costs, PerStageCosts)
    spec = PipelineSpec(2, 3)
    assert [costs.pass_time(spec, 1, k) for k in Pass] == [5, 6, 7, 13]
    assert costs.memory(spec, 0) == (4, 1) and costs.memory(spec, 1) == (1, 1)
    assert costs.comm_time(spec, 0, 1, 0) == 0.5 and costs.comm_time(spec, 1, 0, 1) == 0.25


def test_per_stage_times_by_hand() -> None:
    """1F1B p=2 m=1 with per-stage times and asymmetric links, timed by hand."""
    costs = parse_costs({"stages": [{"f": 1, "b": 2, "w": 1}, {"f": 3, "b": 1, "w": 1}],
                         "links": [[0, 0.5], [2, 0]]})
    sim = simulate(generate("1f1b", 2, 1), costs)
    # 0F0 [0,1]; 1F0 [1.5,4.5]; 1BW0 [4.5,6.5]; 0BW0 [8.5,11.5]
    assert [(sp.start, sp.end) for rank in sim.spans for sp in rank] == [
        (0, 1), (8.5, 11.5), (1.5, 4.5), (4.5, 6.5)]


def test_named_stages_in_any_order() -> None:
    """Entries that name their stage may come in any order."""
    costs = parse_costs({"stages": [dict(STAGE, stage=1, f=9), dict(STAGE, stage=0)]})
    assert costs.pass_time(PipelineSpec(2, 1), 1, Pass.F) == 9


@pytest.mark.parametrize(("obj", "field"), [
    ({"stages": [STAGE, dict(STAGE, f=-1)]}, "'stages[1].f'"),
    ({"stages": [STAGE, {"f": 1, "w": 1}]}, "'stages[1].b' is missing"),
    ({"stages": [dict(STAGE, stage=0), dict(STAGE, stage=2)]}, "stage 1 is missing"),
    ({"stages": [dict(STAGE, stage=0), dict(STAGE, stage=0)]}, "'stages[1].stage'"),
    ({"stages": [dict(STAGE, mem_f=1, mem_w=2)]}, "'stages[0].mem_w'"),
    ({"stages": [dict(STAGE, fwd=1)]}, "unknown field 'stages[0].fwd'"),
    ({"stages": [STAGE], "links": [[0, 1], [1]]}, "'links[1]' has 1 entries"),
    ({"stages": [STAGE], "links": [[0, "x"], [1, 0]]}, "'links[0][1]'"),
    ({"stages": [STAGE], "comm": -0.1}, "'comm'"),
    ({"stages": []}, "'stages'"),
    ({"stage": [STAGE]}, "unknown field 'stage'"),
    ({"transformer": {"model": {"layers": 0, "hidden": 8, "heads": 2, "seq_len": 8},
                      "machine": {"flops": 1e9}}}, "'transformer.model.layers'"),
    ({"transformer": {"model": {"layers": 2, "hidden": 8, "heads": 2, "seq_len": 8}}},
     "'transformer.machine' is missing"),
])
def test_bad_files_name_the_field(obj: object, field: str) -> None:
    """Each malformed costs file is one FormatError whose message names the field."""
    with pytest.raises(FormatError) as err:
        parse_costs(obj, "costs.json")
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    """A syntax error points at its line and column."""
    path = tmp_path / "bad.json"
    path.write_text('{"stages": [\n  {"f": 1,, "b": 1}]}')
    with pytest.raises(FormatError) as err:
        load_costs(path)
    assert err.value.line == 2 and err.value.column == 11


def test_file_that_does_not_fit_the_schedule() -> None:
    """Too few stages or a links matrix of the wrong size is a SpecError naming the field."""
    costs = parse_costs({"stages": [STAGE] * 3})
    with pytest.raises(SpecError, match="'stages' has 3 entries but the schedule has 4 stages.*"
                       "stage 3 is missing"):
        simulate(generate("1f1b", 4, 4), costs)
    costs = parse_costs({"stages": [STAGE] * 2, "links": [[0, 1, 1]] * 3})
    with pytest.raises(SpecError, match="'links' is 3x3 but the schedule has 2 ranks"):
        simulate(generate("1f1b", 2, 4), costs)


def test_transformer_preset_by_hand() -> None:
    """Tiny model: per-layer FLOPs and bytes of ZB Table 1 / design.md, output layer on the last."""
    model = TransformerModel(layers=2, hidden=4, heads=2, seq_len=8, vocab=10, microbatch_size=1)
    costs = TransformerCosts(model, Machine(flops=1024, bandwidth=32, latency=0.5))
    spec = PipelineSpec(2, 1)
    # F = sbh(24h+4s) = 32*128 = 4096, B = 32*160 = 5120, W = 24*s*b*h^2 = 3072; output 2sbhV = 640
    assert [costs.pass_time(spec, 0, k) for k in Pass] == [4, 5, 3, 8]
    assert [costs.pass_time(spec, 1, k) for k in Pass] == [4.625, 5.625, 3.625, 9.25]
    # mem_f = sb(34h + 5as) = 8*216 = 1728, mem_w = 32sbh = 1024; output: 4sbV + sbh*2, sbh*2
    assert costs.memory(spec, 0) == (1728, 1024)
    assert costs.memory(spec, 1) == (1728 + 320 + 64, 1024 + 64)
    assert costs.comm_time(spec, 0, 1, 0) == 0.5 + 64 / 32  # sbh elements of 2 bytes
    assert costs.memory_unit == "bytes"


def test_transformer_bytes_per_element_scales_memory() -> None:
    """The activation counts are bytes at 2 bytes per element: 4 bytes doubles them."""
    small = TransformerModel(layers=1, hidden=4, heads=2, seq_len=8)
    big = TransformerModel(layers=1, hidden=4, heads=2, seq_len=8, bytes_per_element=4)
    assert [2 * x for x in small.layer_memory()] == list(big.layer_memory())


def test_layers_split() -> None:
    """Layers spread evenly; the extra ones go to stages 1, 2, ...; too few layers is an error."""
    assert [layers_of(7, 3, s) for s in range(3)] == [2, 3, 2]
    assert sum(layers_of(50, 8, s) for s in range(8)) == 50
    with pytest.raises(SpecError, match="at least one layer per stage"):
        layers_of(3, 4, 0)


def test_memory_presets() -> None:
    """unit: 1 and 1 per stage; transformer: bytes with mem_w < mem_f; unknown names rejected."""
    spec = PipelineSpec(4, 8)
    assert memory_preset("unit").memory(spec, 2) == (1.0, 1.0)
    mf, mw = memory_preset("transformer").memory(spec, 1)
    assert 0 < mw < mf
    with pytest.raises(SpecError, match="unknown memory model 'huge'"):
        memory_preset("huge")


def test_with_memory_keeps_times() -> None:
    """with_memory swaps the memory only: same timeline, different peaks."""
    base = UniformCosts(f=1, b=2, w=1)
    mem = memory_preset("transformer", TransformerModel(layers=8, hidden=64, heads=4, seq_len=32))
    a = simulate(generate("zb-h1", 4, 8), base)
    b = simulate(generate("zb-h1", 4, 8), with_memory(base, mem))
    assert a.spans == b.spans and a.peak_memory != b.peak_memory
    assert b.memory_unit == "bytes"


def test_reference_peak_heterogeneous_by_hand() -> None:
    """1F1B's peak with a heavy first stage: rank 0 holds p microbatches of stage 0."""
    costs = parse_costs({"stages": [dict(STAGE, mem_f=3)] + [STAGE] * 3})
    spec = PipelineSpec(4, 8)
    assert one_f_one_b_peak(spec, costs) == 12
    sim = simulate(generate("1f1b", 4, 8), costs)
    assert sim.peak_memory == (12, 3, 2, 1) and sim.peak_fraction == 1.0
    # V placement: 1F1B's rank r would hold stages 2r and 2r+1
    vcosts = parse_costs({"stages": [dict(STAGE, mem_f=3)] + [STAGE] * 7})
    assert one_f_one_b_peak(PipelineSpec(4, 8, 2, "v"), vcosts) == 4 * (3 + 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(0, 6),
       st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=6, max_size=6))
def test_1f1b_is_its_own_reference(p: int, extra: int, mems: list[float]) -> None:
    """Under any per-stage memory, simulated 1F1B (m >= p) has peak_fraction exactly 1."""
    costs = parse_costs({"stages": [dict(STAGE, mem_f=mems[s]) for s in range(p)]})
    sim = simulate(generate("1f1b", p, p + extra), costs)
    assert sim.peak_fraction == pytest.approx(1.0)


def test_uniform_reference_is_the_whole_model() -> None:
    """With equal stages the reference is the sum of mem_f over all stages (design.md, "Memory
    accounting")."""
    for name, v in (("1f1b", 1), ("interleaved-1f1b", 2), ("zb-v", 2)):
        sim = simulate(generate(name, 4, 8), UniformCosts(mem_f=2.0))
        assert sim.reference_peak == 2.0 * 4 * v
        assert sim.peak_stage_activations == tuple(x / 2.0 for x in sim.peak_memory)


def test_uniform_costs_reject_bad_values() -> None:
    """Negative or non-numeric uniform costs are SpecErrors naming the cost."""
    with pytest.raises(SpecError, match="cost 'b'"):
        UniformCosts(b=-1)
    with pytest.raises(SpecError, match="cost 'mem_w'"):
        UniformCosts(mem_f=1, mem_w=2)
