"""The grid: ranking, memory and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeblocks as pb
from pipeblocks.ir.formats import load
from pipeblocks.ir.validate import validate
from pipeblocks.planner import PLAN_SCHEDULES, Cluster, Space
from pipeblocks.planner.report import export

GPT = "layers=24,hidden=2048,heads=16,seq=2048,vocab=50304"
BIG = "layers=78,hidden=10240,heads=80,seq=1024,vocab=51200"
KEYS = {"schedule", "dp", "tp", "pp", "microbatch_size", "num_microbatches", "recompute",
        "peak_memory_bytes", "fits", "samples_per_s", "mfu"}


def test_plans_that_do_not_fit_are_never_ranked_first() -> None:
    """With a small GPU the fastest plans do not fit: every fitting plan is ranked above them."""
    tight = pb.plan(GPT, cluster=Cluster(gpus=8, gpu_memory=24e9), global_batch=64)
    plans = tight.plans
    fits = [p.fits for p in plans]
    assert any(fits) and not all(fits)
    assert fits == sorted(fits, reverse=True)
    fastest = max(plans, key=lambda p: p.samples_per_s)
    assert not fastest.fits and tight.best is plans[0] and plans[0].fits
    assert all(p.peak_memory_bytes <= 24e9 for p in plans if p.fits)


def test_no_plan_fits_means_no_best() -> None:
    """A GPU too small for any plan: best is None, every plan is marked."""
    r = pb.plan(BIG, cluster=Cluster(gpus=8, gpu_memory=3e9, reserved=1e9), global_batch=8)
    assert r.best is None and r.plans and not any(p.fits for p in r.plans)


def test_memory_saving_schedule_buys_a_larger_microbatch_or_less_recompute() -> None:
    """At the same layout, v-min holds less activation memory than 1f1b."""
    space = Space(schedules=("1f1b", "v-min"), tp=(1,), pp=(4,), microbatch_sizes=(2,),
                  recompute=(False,), sharding=("none",))
    r = pb.plan(GPT, gpus=4, global_batch=32, space=space)
    mem = {p.schedule: p.peak_memory_bytes for p in r.plans}
    assert mem["v-min"] < mem["1f1b"]


def test_recompute_trades_time_for_memory() -> None:
    """Full recompute: less memory, fewer samples/s, same layout."""
    space = Space(schedules=("1f1b",), tp=(1,), pp=(4,), microbatch_sizes=(1,),
                  sharding=("none",))
    r = pb.plan(GPT, gpus=4, global_batch=16, space=space)
    on, off = (next(p for p in r.plans if p.recompute is x) for x in (True, False))
    assert on.peak_memory_bytes < off.peak_memory_bytes and on.samples_per_s < off.samples_per_s


def test_sharding_shrinks_static_memory_with_data_parallelism() -> None:
    """zero1 and fsdp need less memory than none when dp > 1."""
    space = Space(schedules=("1f1b",), tp=(1,), pp=(2,), microbatch_sizes=(1,),
                  recompute=(False,))
    r = pb.plan(GPT, gpus=8, global_batch=32, space=space)
    mem = {p.sharding: p.peak_memory_bytes for p in r.plans}
    assert mem["fsdp"] < mem["zero1"] < mem["none"]


def test_export_writes_a_valid_schedule_and_the_commands(tmp_path: Path) -> None:
    """The best plan's CSV loads and validates with its pp and m; the commands name them."""
    r = pb.plan(GPT, gpus=8, global_batch=64)
    best = r.best
    assert best is not None
    export(r, tmp_path)
    s = load(tmp_path / "schedule.csv", placement=pb.get(best.schedule).placement.value)
    validate(s)
    assert (s.spec.num_ranks, s.spec.num_microbatches) == (best.pp, best.num_microbatches)
    assert f"--ranks {best.pp} " in (tmp_path / "train.sh").read_text()
    toml = (tmp_path / "torchtitan.toml").read_text()
    assert f"pipeline_parallel_degree = {best.pp}" in toml
    assert f"tensor_parallel_degree = {best.tp}" in toml
    assert json.loads((tmp_path / "plan.json").read_text())["plan"]["pp"] == best.pp


GPT3 = "layers=96,hidden=12288,heads=96,seq=2048,vocab=51200"


@pytest.mark.slow
@pytest.mark.parametrize("model,gpus,batch", [(BIG, "40", "160"), (GPT3, "64", "512")])
def test_acceptance_command_ranks_every_family_in_time(model: str, gpus: str, batch: str) -> None:
    """The issue's 40-GPU command and a 64-GPU grid: JSON with the plans keys, every family,
    under 60 s."""
    argv = [str(Path(sys.executable).parent / "pipeblocks"), "plan", "--model", model,
            "--gpus", gpus, "--gpus-per-node", "8", "--gpu-memory", "80GB",
            "--flops", "312e12", "--global-batch", batch, "--json"]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert took < 60, took
    doc = json.loads(out.stdout)
    assert doc["plans"] and all(KEYS <= set(p) for p in doc["plans"])
    assert doc["plans"][0]["fits"]
    assert set(doc["best_per_schedule"]) >= set(PLAN_SCHEDULES)
    assert "planning [" in out.stderr  # progress goes to stderr, not into the JSON


def test_searched_schedules_hold_less_than_one_f_one_b_on_the_same_layout() -> None:
    """search@0.6 plans come after the grid, on its layouts, with less memory than 1f1b's."""
    space = Space(schedules=("1f1b",), tp=(1,), pp=(4,), recompute=(False,),
                  sharding=("none",), search_budgets=(0.6,))
    r = pb.plan(GPT, gpus=8, global_batch=64, space=space)
    ones = {(p.dp, p.microbatch_size): p for p in r.plans if p.schedule == "1f1b"}
    found = [p for p in r.plans if p.schedule == "search@0.6"]
    assert found
    for p in found:
        assert p.peak_memory_bytes < ones[(p.dp, p.microbatch_size)].peak_memory_bytes


def test_a_searched_best_plan_exports_its_schedule(tmp_path: Path) -> None:
    """When search@0.6 is the only schedule, the export holds a schedule within the budget."""
    space = Space(schedules=("search@0.6",), tp=(1,), pp=(4,), microbatch_sizes=(1,),
                  recompute=(False,), sharding=("none",), search_budgets=())
    r = pb.plan(GPT, gpus=4, global_batch=16, space=space)
    assert r.best is not None and r.best.schedule == "search@0.6"
    export(r, tmp_path)
    s = load(tmp_path / "schedule.json")
    validate(s)
    assert s.spec.placement.value == "v" and s.spec.num_microbatches == 16
