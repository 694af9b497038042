"""Recomputation as schedule data: the IR, the formats, the simulator's time and memory."""

from __future__ import annotations

import logging

import pytest

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.generators import generate, names
from pipeblocks.ir.formats import dumps, loads
from pipeblocks.ir.recompute import parse_recompute, with_recompute
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim import TransformerModel, UniformCosts, memory_preset, simulate, with_memory
from pipeblocks.sim.recompute import input_memory


def test_recompute_round_trips_through_json() -> None:
    """The recompute stages survive dumps/loads; a plain schedule's JSON has no such key."""
    s = with_recompute(generate("zb-v", 4, 8), [0, 5])
    back = loads(dumps(s, "json"), "json")
    assert back == s and back.recompute == frozenset({0, 5})
    assert '"recompute"' not in dumps(generate("zb-v", 4, 8), "json")


def test_json_refuses_a_bad_recompute_stage() -> None:
    """A recompute entry outside 0..S-1 is a FormatError naming the key."""
    text = dumps(with_recompute(generate("1f1b", 2, 2)), "json").replace("[0, 1]", "[0, 7]")
    with pytest.raises(FormatError, match=r"recompute\[1\] must be a stage in 0..1"):
        loads(text, "json")


def test_torch_csv_drops_recompute_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The CSV cannot hold the choice: it is dropped and a warning says so."""
    with caplog.at_level(logging.WARNING):
        text = dumps(with_recompute(generate("1f1b", 2, 2)), "torch-csv")
    assert "no recompute column" in caplog.text
    assert loads(text, "torch-csv").recompute == frozenset()


def test_schedule_refuses_out_of_range_stage() -> None:
    """Schedule(recompute=...) checks the stages against the spec."""
    s = generate("1f1b", 2, 2)
    with pytest.raises(SpecError, match="stage 2"):
        Schedule(s.spec, s.programs, "x", frozenset({2}))
    with pytest.raises(SpecError, match="all, none or stages"):
        parse_recompute("half", s.spec)


@pytest.mark.parametrize("name", ["1f1b", "zb-v", "interleaved-1f1b"])
def test_name_r_is_name_with_every_stage_recomputed(name: str) -> None:
    """NAME-r (1f1b-r: the papers' 1F1B-R): NAME's programs, all stages recomputed; the
    listing keeps the plain families only."""
    r, plain = generate(f"{name}-r", 4, 8), generate(name, 4, 8)
    assert r.programs == plain.programs and r.name == f"{name}-r"
    assert r.recompute == frozenset(range(plain.spec.num_stages))
    assert f"{name}-r" not in names()
    with pytest.raises(SpecError, match="unknown schedule"):
        generate("nope-r", 4, 8)


@pytest.mark.parametrize("name", ["1f1b", "zb-h1", "v-half", "interleaved-1f1b"])
def test_recompute_charges_one_forward_per_backward(name: str) -> None:
    """Busy time grows by exactly one F per (stage, mb); memory returns to zero at the end."""
    costs = UniformCosts(f=2, b=3, w=1, comm=0.25)
    plain = generate(name, 4, 8)
    sim, sim_r = simulate(plain, costs), simulate(with_recompute(plain), costs)
    v = plain.spec.stages_per_rank
    for r in range(4):
        assert sim_r.busy[r] == pytest.approx(sim.busy[r] + 8 * v * 2 / v)
        assert sim_r.memory[r][-1][1] == pytest.approx(0.0)
    assert sim_r.makespan > sim.makespan


def test_recompute_memory_in_bytes_for_the_transformer() -> None:
    """With the transformer preset a recomputed 1F1B rank 0 holds p-1 inputs plus one stage's
    activations at once: peak = (p - 1) * input + mem_f of its stage (its last microbatch's
    input is rebuilt into mem_f)."""
    model = TransformerModel(layers=8, hidden=256, heads=4, seq_len=128, vocab=0)
    costs = with_memory(UniformCosts(), memory_preset("transformer", model))
    s = generate("1f1b", 4, 8)
    sim_r = simulate(with_recompute(s), costs)
    mem_f = costs.memory(s.spec, 1)[0]
    inp = input_memory(costs, s.spec, 1)
    assert inp == 128 * 256 * 2  # s*b*h elements of 2 bytes
    # rank 1 warms up with p-1-1 = 2 F's, so 3 inputs are held when its first B rebuilds
    assert sim_r.peak_memory[1] == pytest.approx(2 * inp + mem_f)
    assert max(sim_r.peak_memory) < max(simulate(s, costs).peak_memory) / 2


def test_partial_recompute_lies_between() -> None:
    """Recomputing one local slot of a V schedule saves part of the memory for part of the
    time."""
    s = generate("v-half", 4, 16)
    half = with_recompute(s, [st for st in range(8) if s.spec.local_of(st) == 0])
    full = with_recompute(s)
    peaks = [max(simulate(x).peak_memory) for x in (s, half, full)]
    spans = [simulate(x).makespan for x in (s, half, full)]
    assert peaks[0] > peaks[1] > peaks[2]
    assert spans[0] < spans[1] < spans[2]


def test_grid_marks_recomputed_backwards() -> None:
    """The ASCII grid marks a recomputed stage's backward with '*' and no other cell."""
    text = str(with_recompute(generate("1f1b", 2, 2), [1]))
    assert text.splitlines()[1].count("*") == 2 and "*" not in text.splitlines()[0]
