"""``pipeblocks train`` and ``torchrun -m pipeblocks.train``: real runs, JSON fields, refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeblocks.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[2]


def _train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeblocks", "train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.distributed
def test_schedule_file_check_grads_memory_and_json(tmp_path) -> None:
    """An exported CSV with --check-grads --memory --json: tiny differences, per-rank peaks."""
    csv = tmp_path / "zb-h1.csv"
    assert cli(["export", "zb-h1", "-p", "2", "-m", "4", "--format", "torch-csv",
                "-o", str(csv)]) == 0
    res = _train("--schedule-file", str(csv), "--ranks", "2", "--steps", "2",
                 "--check-grads", "--memory", "--json")
    assert res.returncode == 0, res.stderr
    r = _last_json(res.stdout)
    assert r["schedule"] == "zb-h1.csv" and r["ranks"] == 2 and len(r["loss"]) == 2
    assert r["microbatches"] == 4
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
    assert len(r["step_ms"]) == 2 and r["step_ms_median"] > 0
    assert len(r["peak_activation_bytes"]) == 2 and min(r["peak_activation_bytes"]) > 0


@pytest.mark.distributed
def test_emulated_run_reports_the_simulation_and_text_lines() -> None:
    """--emulate-ms: simulated_ms and measured/simulated; without --json a line per step."""
    res = _train("--schedule", "v-half", "--ranks", "2", "--microbatches", "4", "--steps", "2",
                 "--emulate-ms", "5")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert len(steps) == 2 and all("ms" in ln and "tokens/s" in ln for ln in steps)
    assert any("measured / simulated" in ln for ln in lines)
    res = _train("--schedule", "v-half", "--ranks", "2", "--microbatches", "4", "--steps", "2",
                 "--emulate-ms", "5", "--json")
    r = _last_json(res.stdout)
    # v-half, p=2, m=4: 4 stages, every F, B, W pass 5 ms; the simulator says at least 2*4*3*5
    assert r["emulate_ms"] == 5 and r["simulated_ms"] >= 120
    assert 0.95 <= r["measured_over_simulated"] <= 2.0
    assert r["loss"] == [None, None]


@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_torchrun_runs_the_same_program() -> None:
    """torchrun --standalone --nproc-per-node 2 -m pipeblocks.train trains and prints JSON."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "pipeblocks.train",
         "--schedule", "1f1b", "--microbatches", "4", "--steps", "2", "--check-grads", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr
    r = _last_json(res.stdout)
    assert r["ranks"] == 2 and r["grad_max_abs_diff"] <= 1e-5


def test_a_layout_that_does_not_match_the_schedule_is_refused(capsys) -> None:
    """--layout with 2 stages for a 4-stage schedule: exit 2 before any process starts."""
    code = cli(["train", "--schedule", "1f1b", "--ranks", "4", "--microbatches", "8",
                "--layout", "4,4"])
    assert code == 2
    assert "--layout gives 2 stages but the schedule has 4" in capsys.readouterr().err


def test_bad_options_are_one_line_errors(capsys) -> None:
    """An unknown schedule or a missing --microbatches is a usage error (exit 2)."""
    assert cli(["train", "--schedule", "1f1c", "--ranks", "2", "--microbatches", "4"]) == 2
    assert "unknown schedule '1f1c'" in capsys.readouterr().err
    assert cli(["train", "--schedule", "1f1b", "--ranks", "2"]) == 2
    assert "--microbatches is required" in capsys.readouterr().err
    assert cli(["train", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "4",
                "--emulate-ms", "5", "--check-grads"]) == 2


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize(("example", "schedule"), [("hf_llama", "v-half"), ("hf_gpt2", "1f1b")])
def test_a_hf_model_from_a_file_trains_and_checks_its_gradients(example: str,
                                                                 schedule: str) -> None:
    """--model examples/hf_*.py:build on 4 ranks (GPT-2's head tied across ranks 0 and 3):
    --check-grads equals the whole model, loss equals HF's token mean."""
    pytest.importorskip("transformers")
    res = _train("--model", f"examples/{example}.py:build", "--ranks", "4", "--schedule",
                 schedule, "--microbatches", "8", "--steps", "2", "--check-grads", "--json")
    assert res.returncode == 0, res.stderr
    r = _last_json(res.stdout)
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
    assert len(r["loss"]) == 2


def test_a_bad_model_factory_is_refused_before_any_process(tmp_path) -> None:
    """--model without a factory, with a missing file or function: exit 2, what to give."""
    bad = tmp_path / "m.py"
    bad.write_text("x = 1\n")
    for model, want in (("nothing", "MODULE:FACTORY"), ("nofile.py:build", "no file"),
                        (f"{bad}:build", "has no function 'build'")):
        res = _train("--model", model, "--ranks", "2", "--schedule", "1f1b",
                     "--microbatches", "4", "--steps", "1", timeout=60)
        assert res.returncode == 2 and want in res.stderr, (model, res.stderr)


def test_layout_auto_balances_the_head_with_the_planner_partition() -> None:
    """--layout auto: the planner's partition of the blocks, the head counted on the last stage
    (a large vocabulary leaves it fewer blocks); loop and V placements; no process started."""
    from pipeblocks.cli.train import build_parser, build_plan
    from pipeblocks.planner.model import ModelSpec
    from pipeblocks.planner.partition import partition

    for schedule, v, placement in (("1f1b", 1, "loop"), ("v-half", 2, "v")):
        args = build_parser().parse_args([
            "--schedule", schedule, "--ranks", "4", "--microbatches", "8", "--layers", "16",
            "--vocab", "8192", "--dim", "64", "--seq", "32", "--layout", "auto"])
        plan = build_plan(args)
        blocks = list(plan.layout)
        blocks[0] -= 1
        blocks[-1] -= 1
        model = ModelSpec(layers=16, hidden=64, heads=4, seq=32, vocab=8192)
        want = partition(16, 4, stages_per_rank=v, placement=placement,
                         layer=sum(model.layer_flops(32)),
                         extra={4 * v - 1: 3 * model.head_flops(32)})
        assert tuple(blocks) == want and sum(blocks) == 16
        assert blocks[-1] < max(blocks)  # the head's stage carries fewer blocks
