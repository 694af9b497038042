"""A profile as the planner's model: measured times and bytes replace the formulas."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import pipeblocks as pb
from pipeblocks.cli.main import main as cli
from pipeblocks.errors import FormatError, SpecError
from pipeblocks.planner import Cluster, Space
from pipeblocks.planner.measured import load_model_file, measured_from_costs, read_model
from pipeblocks.planner.memory import activation_peaks
from pipeblocks.sim.collectives import Link

TINY = "layers=8,hidden=64,heads=4,seq=32,vocab=256,act_bytes=4,dropout=0,flash=1"
FREE = Link(1e30, 0.0)  # transfers cost nothing: the step is the schedule's closed form


def _costs(layer: tuple[float, ...], emb: tuple[float, ...], head: tuple[float, ...],
           counts: tuple[int, ...]) -> dict[str, object]:
    """A per-stage costs file (ms, bytes) of stages with ``counts`` layers and the ends."""
    stages = []
    for s, n in enumerate(counts):
        q = [n * x for x in layer]
        if s == 0:
            q = [a + e for a, e in zip(q, emb, strict=True)]
        if s == len(counts) - 1:
            q = [a + e for a, e in zip(q, head, strict=True)]
        stages.append(dict(zip(("f", "b", "w", "mem_f", "mem_w"), q, strict=True)))
    return {"time_unit": "ms", "memory_unit": "bytes", "stages": stages}


@pytest.mark.parametrize("counts", [(1, 1, 1), (2, 3, 3, 1), (0, 2, 2, 2, 2)])
def test_layer_embedding_and_head_are_recovered_from_any_split(counts: tuple[int, ...]) -> None:
    """Stages built from known layer, embedding and head costs give those costs back."""
    layer, emb, head = (1.0, 2.0, 1.5, 400.0, 150.0), (0.25, 0.5, 0.0, 8.0, 0.0), \
        (3.0, 4.0, 2.0, 900.0, 300.0)
    m = measured_from_costs(_costs(layer, emb, head, counts), counts, microbatch_size=2)
    ms = [1e-3] * 3 + [1.0, 1.0]  # ms -> s for the times
    for got, want in ((m.layer, layer), (m.embedding, emb), (m.head, head)):
        assert got == pytest.approx([w * u for w, u in zip(want, ms, strict=True)])


def _plan(model: str, mbs: int, **space: object) -> pb.planner.Plan:
    cluster = Cluster(gpus=4, intra=FREE, inter=FREE, reserved=0.0)
    sp = Space(schedules=("1f1b",), tp=(1,), pp=(4,), microbatch_sizes=(mbs,),
               recompute=(False,), sharding=("none",), search_budgets=(), **space)
    return pb.plan(model, cluster=cluster, global_batch=16, space=sp).plans[0]


def _write(tmp: Path, costs: dict[str, object], **doc: object) -> str:
    (tmp / "costs.json").write_text(json.dumps(costs))
    body = {"model": TINY, "microbatch_size": 2, "costs": "costs.json",
            "layers_per_stage": [1] * len(costs["stages"]), **doc}  # type: ignore[arg-type]
    (tmp / "model.json").write_text(json.dumps(body))
    return str(tmp / "model.json")


def test_measured_times_replace_the_flops_model(tmp_path: Path) -> None:
    """1F1B at the profiled microbatch: step = (m + p - 1) x a stage's F + B + W, measured."""
    costs = _costs((1.0, 1.0, 2.0, 1e3, 5e2), (0.0,) * 5, (0.0,) * 5, (1, 1, 1))
    path = _write(tmp_path, costs)
    p = _plan(path, 2)
    assert p.layers_per_stage == (2, 2, 2, 2) and p.num_microbatches == 8
    assert p.step_time_s == pytest.approx((8 + 4 - 1) * 2 * 4e-3, rel=1e-6)
    # at twice the microbatch, the FLOPs model's ratio: 2 x eff(b0) / eff(2 b0)
    md, cl = read_model(path), Cluster(gpus=4)
    eff = [cl.efficiency(2.0 * b * md.seq * md.hidden * md.f) for b in (2, 4)]
    p4 = _plan(path, 4)
    assert p4.step_time_s == pytest.approx((4 + 4 - 1) * 2 * 4e-3 * 2 * eff[0] / eff[1],
                                           rel=1e-6)


def test_a_slow_measured_head_moves_layers_off_the_last_stage(tmp_path: Path) -> None:
    """A head that costs two layers' time: the partition gives the last stage fewer layers,
    where the FLOPs model (a cheap head at this size) splits evenly."""
    costs = _costs((1.0, 1.0, 2.0, 1e3, 5e2), (0.0,) * 5, (2.0, 2.0, 4.0, 0.0, 0.0), (1, 1, 1))
    p = _plan(_write(tmp_path, costs), 2)
    assert p.layers_per_stage[-1] < p.layers_per_stage[0]
    assert _plan(TINY, 2).layers_per_stage == (2, 2, 2, 2)


def test_measured_bytes_give_each_ranks_peak(tmp_path: Path) -> None:
    """1F1B keeps p - r microbatches on rank r (graph held until W): peak = (p - r) mem_f."""
    costs = _costs((1.0, 1.0, 2.0, 1000.0, 400.0), (0.0, 0.0, 0.0, 64.0, 0.0),
                   (1.0, 1.0, 1.0, 3000.0, 200.0), (1, 1, 1))
    md = read_model(_write(tmp_path, costs))
    stage = [2 * 1000.0 + 64.0, 2000.0, 2000.0, 2000.0 + 3000.0]  # layers 2,2,2,2 at b0 = 2
    got = activation_peaks(md, "1f1b", 4, 8, 2, release_at_b=False)
    assert got == pytest.approx([(4 - r) * stage[r] for r in range(4)])
    # at microbatch 4 every byte doubles; the formulas give something else
    assert activation_peaks(md, "1f1b", 4, 8, 4, release_at_b=False) == pytest.approx(
        [2 * x for x in got])
    assert activation_peaks(replace(md, measured=None), "1f1b", 4, 8, 2,
                            release_at_b=False) != pytest.approx(got)


def test_the_command_line_takes_a_model_file(tmp_path: Path, capsys) -> None:
    """`plan --model FILE --json`: plans ranked, the measurements in the model's JSON."""
    costs = _costs((1.0, 1.0, 2.0, 1e3, 5e2), (0.0,) * 5, (0.5, 0.5, 0.5, 10.0, 0.0), (1, 1, 1))
    path = _write(tmp_path, costs)
    assert cli(["plan", "--model", path, "--gpus", "4", "--global-batch", "16", "--json",
                "--quiet", "--top", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plans"][0]["fits"] and doc["model"]["measured"]["microbatch_size"] == 2
    assert doc["model"]["layers"] == 8


def test_bad_profiles_are_refused_with_the_fix(tmp_path: Path) -> None:
    """Two stages cannot tell a layer from the ends; memory must be bytes; counts must add up."""
    two = _costs((1.0, 1.0, 2.0, 1e3, 5e2), (0.0,) * 5, (0.0,) * 5, (4, 4))
    with pytest.raises(SpecError, match="3 or more stages.*pipeblocks profile --ranks 2"):
        load_model_file(_write(tmp_path, two))
    units = {**_costs((1.0,) * 5, (0.0,) * 5, (0.0,) * 5, (1, 1, 1)), "memory_unit": "x"}
    with pytest.raises(FormatError, match="memory_unit' must be \"bytes\""):
        load_model_file(_write(tmp_path, units))
    odd = _costs((1.0,) * 5, (0.0,) * 5, (0.0,) * 5, (1, 1, 1))
    with pytest.raises(FormatError, match="integers >= 0"):
        load_model_file(_write(tmp_path, odd, layers_per_stage=[1, -1, 1]))
    with pytest.raises(FormatError, match="do not split evenly over 3 stages"):
        load_model_file(_write(tmp_path, odd, layers_per_stage=None))
    with pytest.raises(FormatError, match="unknown field 'modle'"):
        load_model_file(_write(tmp_path, odd, modle=1))
