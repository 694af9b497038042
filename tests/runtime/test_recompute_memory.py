"""Measured activation memory with recomputation against the simulator's model (one process)."""

from __future__ import annotations

import pytest
import torch

import pipeblocks as pb
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.moves import OffloadLink
from pipeblocks.ir.offload import with_offload
from pipeblocks.ir.recompute import with_recompute
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.split import ends_layout, split
from pipeblocks.runtime.stage import Stage
from pipeblocks.runtime.steps import _saved_bytes

pytestmark = pytest.mark.torch
M, MBS = 4, 4
CFG = GPTConfig(vocab=64, seq=16, dim=32, heads=2, layers=4)


class _Measured:
    """The small GPT's memory per stage, measured once: mem_f = bytes one F saves (held until
    W or BW, as the executor counts), the input's bytes for a recomputed stage."""

    memory_unit = "bytes"

    def __init__(self, mem_f: list[int], mem_in: list[int]) -> None:
        self.mem_f, self.mem_in = mem_f, mem_in

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        return 2.0 if kind is Pass.BW else 1.0

    def comm_time(self, spec: PipelineSpec, src: int, dst: int, stage: int) -> float:
        return 0.0

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return float(self.mem_f[stage]), float(self.mem_f[stage])

    def input_memory(self, spec: PipelineSpec, stage: int) -> float:
        return float(self.mem_in[stage])


def _stages(num_stages: int) -> dict[int, torch.nn.Module]:
    return dict(enumerate(split(TinyGPT(CFG, seed=3), num_stages,
                                ends_layout(CFG.layers, num_stages))))


def _calibrate(num_stages: int) -> _Measured:
    """One microbatch through plain stages, counting what each F saves and its input."""
    mods = _stages(num_stages)
    skip = {p.untyped_storage().data_ptr() for m in mods.values() for p in m.parameters()}
    tokens, targets = synthetic_batch(CFG, MBS, seed=1)
    x, mem_f, mem_in = tokens, [], []
    for s in range(num_stages):
        mem_in.append(x.untyped_storage().nbytes())
        st = Stage(mods[s], s, num_stages, lm_loss)
        with _saved_bytes(skip) as counter:
            x = st.forward(0, x, targets)
        mem_f.append(counter[0])
    return _Measured(mem_f, mem_in)


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "zb-h1", "v-half", "zb-v", "v-min"])
@pytest.mark.parametrize("which", ["none", "all", "first", "offload"])
def test_measured_peak_matches_simulated_within_5_percent(name: str, which: str) -> None:
    """The executor's measured peak (measure_memory) is within 5% of the simulated peak under
    the measured per-stage memory, with no, full and first-stage-only recomputation, and with
    every eligible pair offloaded (an instant link: the copies end with their op)."""
    plain = pb.generate(name, 1, M)
    chosen = {"none": [], "all": None, "first": [0], "offload": []}[which]
    schedule = plain if chosen == [] else with_recompute(plain, chosen)
    if which == "offload":
        schedule = with_offload(plain, link=OffloadLink())
    S = schedule.spec.num_stages
    costs = _calibrate(S)
    tokens, targets = synthetic_batch(CFG, M * MBS, seed=1)
    ex = Executor(schedule, _stages(S), lm_loss, None, rank=0, measure_memory=True)
    measured = ex.step(tokens, targets).peak_activation_bytes
    simulated = pb.simulate(schedule, costs).peak_memory[0]
    assert measured == pytest.approx(simulated, rel=0.05), (measured, simulated)
    plain_peak = pb.simulate(plain, costs).peak_memory[0]
    if which == "all" and plain_peak > 2 * max(costs.mem_f):  # several microbatches held
        assert measured < 0.75 * plain_peak
    if which == "offload":
        assert simulated <= plain_peak


def _calibrate_plan(argv: list[str]) -> tuple[object, _Measured]:
    """The plan `pipeblocks train ARGV` runs, and its stages' memory measured in this process
    with one microbatch (what each F saves, each stage's input)."""
    import argparse

    from pipeblocks.cli.train import add_train_args, build_plan

    parser = argparse.ArgumentParser()
    add_train_args(parser, ranks_required=True)
    plan = build_plan(parser.parse_args(argv))
    S = plan.schedule.spec.num_stages
    parts = split(plan.model.build(), S, plan.layout)
    skip = {p.untyped_storage().data_ptr() for m in parts for p in m.parameters()}
    x, targets = plan.model.batch(plan.options.microbatch_size, 0)
    mem_f, mem_in = [], []
    for s in range(S):
        mem_in.append(x.untyped_storage().nbytes())
        with _saved_bytes(skip) as counter:
            x = Stage(parts[s], s, S, plan.model.loss).forward(0, x, targets)
        mem_f.append(counter[0])
    return plan, _Measured(mem_f, mem_in)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", ["1f1b", "v-half"])
@pytest.mark.parametrize("recompute", [[], ["--recompute", "all"], ["--offload", "all"]],
                         ids=["plain", "recompute", "offload"])
def test_four_ranks_small_gpt_within_5_percent(name: str, recompute: list[str]) -> None:
    """`pipeblocks train --memory` on 4 gloo ranks: every rank's measured peak is within 5% of
    the simulated one (per-stage memory measured in this process), with neither, with
    recomputation and with offload (every eligible pair, an instant link)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    argv = ["--schedule", name, "--ranks", "4", "--microbatches", "8", "--steps", "1",
            "--memory", "--json", *recompute]
    out = subprocess.run([sys.executable, "-m", "pipeblocks", "train", *argv],
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_activation_bytes"]
    plan, costs = _calibrate_plan(argv)
    simulated = pb.simulate(plan.schedule, costs).peak_memory  # type: ignore[attr-defined]
    for rank, (got, want) in enumerate(zip(measured, simulated, strict=True)):
        assert got == pytest.approx(want, rel=0.05), (rank, measured, simulated)
