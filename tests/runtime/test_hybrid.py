"""Data-parallel pipelines (DDP-style): real gloo processes against the unpartitioned model."""

from __future__ import annotations

import argparse
import json
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
@pytest.mark.parametrize("name,ranks", [("1f1b", 4), ("zb-v", 4), ("v-half", 4),
                                        ("v-half", 8)])
def test_ddp_pipeline_matches_the_unpartitioned_model(name: str, ranks: int) -> None:
    """dp 2: step-1 gradients and 3 steps of losses (Adam stepped) equal the whole model's."""
    argv = _args("--schedule", name, "--ranks", str(ranks), "--dp", "2", "--microbatches",
                 str(ranks), "--microbatch-size", "2")
    r = _run(argv)
    assert r["dp"] == 2 and r["pp"] == ranks // 2
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
    want = _reference_losses(argv)
    assert r["loss"] == pytest.approx(want, abs=1e-5)


def test_dp_that_does_not_divide_the_ranks_is_refused() -> None:
    """--ranks 6 --dp 4 names the rule before any process starts."""
    res = subprocess.run([sys.executable, "-m", "pipeblocks", "train", "--schedule", "1f1b",
                          "--ranks", "6", "--dp", "4", "--microbatches", "4"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "divisible by dp * tp" in res.stderr
