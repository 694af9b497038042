"""Data-parallel pipelines (DDP-style): real gloo processes against the unpartitioned model."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeblocks.cli.train import add_train_args, build_plan

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3


def _args(*argv: str) -> list[str]:
    return [*argv, "--steps", str(STEPS), "--check-grads", "--json", "--timeout", "120"]


def _reference_losses(argv: list[str]) -> list[float]:
    """The unpartitioned model trained on the global batch with the same Adam, step by step."""
    p = argparse.ArgumentParser()
    add_train_args(p, ranks_required=True)
    plan = build_plan(p.parse_args(argv))
    torch.manual_seed(0)
    model = plan.model.build()
    opt = torch.optim.Adam(model.parameters(), lr=plan.options.lr)
    losses = []
    for step in range(STEPS):
        inputs, targets = plan.model.batch(plan.global_batch_size, step)[:2]
        opt.zero_grad()
        loss = plan.model.loss(model(inputs), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _run(argv: list[str]) -> dict:
    res = subprocess.run([sys.executable, "-m", "pipeblocks", "train", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("name,ranks", [("1f1b", 4), ("zb-v", 4), ("v-half", 4),
                                        ("v-half", 8)])
def test_dp_pipeline_matches_the_unpartitioned_model(name: str, ranks: int, mode: str) -> None:
    """dp 2 (DDP-style or FSDP2): step-1 gradients and 3 steps of losses (Adam stepped) equal
    the whole model's on the global batch."""
    argv = _args("--schedule", name, "--ranks", str(ranks), "--dp", "2", "--microbatches",
                 str(ranks), "--microbatch-size", "2", "--dp-mode", mode)
    r = _run(argv)
    assert r["dp"] == 2 and r["pp"] == ranks // 2
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
    want = _reference_losses(argv)
    assert r["loss"] == pytest.approx(want, abs=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_without_reshard_after_forward_matches_too() -> None:
    """--no-reshard-after-forward (parameters kept gathered from F to backward): still exact."""
    argv = _args("--schedule", "zb-v", "--ranks", "4", "--dp", "2", "--microbatches", "4",
                 "--microbatch-size", "2", "--dp-mode", "fsdp", "--no-reshard-after-forward")
    r = _run(argv)
    assert r["grad_max_abs_diff"] <= 1e-5
    assert r["loss"] == pytest.approx(_reference_losses(argv), abs=1e-5)


@pytest.mark.distributed
def test_emulated_dp_run_simulates_the_reductions() -> None:
    """--emulate-ms with --dp: the report's simulated step includes each stage's all-reduce."""
    from pipeblocks.generators import generate
    from pipeblocks.sim import UniformCosts, simulate

    r = _run(["--schedule", "1f1b", "--ranks", "4", "--dp", "2", "--microbatches", "4",
              "--steps", "2", "--emulate-ms", "5", "--emulate-bandwidth", "1e7", "--json"])
    plain = simulate(generate("1f1b", num_ranks=2, num_microbatches=4),
                     UniformCosts(f=5, b=5, w=5, comm=r["comm_ms"])).makespan
    assert r["dp"] == 2 and r["simulated_ms"] > plain + 5
    assert r["measured_over_simulated"] > 0.9


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_checkpoint_resumes_exactly_on_the_same_mesh_and_on_dp1(mode: str, tmp_path) -> None:
    """Saved at step 2 of 4 under dp 2: resuming on dp 2, and on dp 1 with the same global
    batch, gives the uninterrupted run's losses for steps 3 and 4."""
    base = ["--schedule", "1f1b", "--microbatches", "4", "--json", "--timeout", "120"]
    dp2 = [*base, "--ranks", "4", "--dp", "2", "--dp-mode", mode, "--microbatch-size", "2"]
    whole = _run([*dp2, "--steps", "4"])["loss"]
    _run([*dp2, "--steps", "2", "--save", str(tmp_path)])
    again = _run([*dp2, "--steps", "4", "--resume", str(tmp_path)])["loss"]
    assert again == pytest.approx(whole[2:], abs=1e-6)
    dp1 = [*base, "--ranks", "2", "--microbatch-size", "4", "--steps", "4",
           "--resume", str(tmp_path)]
    assert _run(dp1)["loss"] == pytest.approx(whole[2:], abs=1e-5)


def test_dp_that_does_not_divide_the_ranks_is_refused() -> None:
    """--ranks 6 --dp 4 names the rule before any process starts."""
    res = subprocess.run([sys.executable, "-m", "pipeblocks", "train", "--schedule", "1f1b",
                          "--ranks", "6", "--dp", "4", "--microbatches", "4"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "divisible by dp * tp" in res.stderr


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_nodes_on_localhost_runs_dp2_pp2() -> None:
    """Two torchrun agents (--nnodes 2 --nproc-per-node 2, c10d rendezvous on localhost)."""
    from pipeblocks.runtime.launch import free_port

    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = free_port()
    cmd = [torchrun, "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"hybrid{port}",
           "-m", "pipeblocks.train", "--dp", "2", "--schedule", "1f1b", "--microbatches", "4",
           "--steps", "2", "--check-grads", "--json", "--timeout", "120"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    try:
        for node in nodes:
            outs.append(node.communicate(timeout=400))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [n.returncode for n in nodes] == [0, 0], [err[-1500:] for _, err in outs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs if out.strip()]
    assert len(reports) == 1  # rank 0's, on whichever agent got node rank 0
    r = reports[0]
    assert r["dp"] == 2 and r["pp"] == 2 and r["ranks"] == 4
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
