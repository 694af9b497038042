"""Tensor parallel per stage (DTensor plans): real gloo processes against the whole model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeblocks.cli.train import add_train_args, build_plan
from pipeblocks.errors import SpecError
from pipeblocks.runtime.split import layers_of
from pipeblocks.runtime.tree import call, wanted_side

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
TINY = ["--layers", "4", "--dim", "32", "--heads", "4", "--seq", "16", "--vocab", "64"]
FALLBACK = "B/W split off, B runs the fused backward and W nothing: the graph holds a custom " \
           "autograd Function"


def _args(*argv: str) -> list[str]:
    return [*argv, "--steps", str(STEPS), "--check-grads", "--json", "--timeout", "120"]


def _plan(argv: list[str]):
    p = argparse.ArgumentParser()
    add_train_args(p, ranks_required=True)
    return build_plan(p.parse_args(argv))


def _reference_losses(argv: list[str]) -> list[float]:
    """The unpartitioned model (its layers in order, side inputs to those that ask) trained
    on the global batch with the same Adam, step by step."""
    plan = _plan(argv)
    layers = layers_of(plan.model.build())
    opt = torch.optim.Adam(nn.ModuleList(layers).parameters(), lr=plan.options.lr)
    losses = []
    for step in range(STEPS):
        got = plan.model.batch(plan.global_batch_size, step)
        h, targets, side = got[0], got[1], (got[2] if len(got) > 2 else {})
        for layer in layers:
            h = call(layer, h, side, wanted_side(layer, list(side)))
        loss = plan.model.loss(h, targets)
        if isinstance(loss, tuple):  # (sum, count): the token mean
            loss = loss[0] / loss[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _run(argv: list[str]) -> tuple[dict, str]:
    res = subprocess.run([sys.executable, "-m", "pipeblocks", "train", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def _check(argv: list[str], dp: int, tp: int, pp: int) -> str:
    r, err = _run(argv)
    assert (r["dp"], r["tp"], r["pp"], r["ranks"]) == (dp, tp, pp, dp * tp * pp)
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
    assert r["loss"] == pytest.approx(_reference_losses(argv), abs=1e-5)
    return err


@pytest.mark.distributed
@pytest.mark.slow
def test_tp2_pp2_zb_h1_matches_the_unpartitioned_model() -> None:
    """(tp 2, pp 2) on zb-h1: step-1 gradients (sharded ones gathered) and 3 losses (Adam
    stepped) equal the whole model's; every stage ran sharded, so its B/W split fell back to
    the fused backward, saying why (DTensor's conversions are custom autograd Functions)."""
    argv = _args("--schedule", "zb-h1", "--ranks", "4", "--tp", "2", "--microbatches", "4",
                 "--microbatch-size", "2", *TINY)
    err = _check(argv, dp=1, tp=2, pp=2)
    assert err.count(FALLBACK) == 4  # 2 stages x 2 tp ranks


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_dp2_tp2_pp2_v_min_matches_the_unpartitioned_model(mode: str) -> None:
    """(dp 2, tp 2, pp 2) on v-min, DDP-style or FSDP2 over the dp slice of the 3-D mesh
    (fully_shard of a tensor-parallel module): equal to the whole model on the global batch."""
    argv = _args("--schedule", "v-min", "--ranks", "8", "--dp", "2", "--tp", "2",
                 "--dp-mode", mode, "--microbatches", "4", "--microbatch-size", "2", *TINY)
    _check(argv, dp=2, tp=2, pp=2)


@pytest.mark.distributed
@pytest.mark.slow
def test_hf_llama_plan_on_tp2_pp2_matches_the_model() -> None:
    """The HF Llama plan (q/k/v/gate/up column-wise, o/down row-wise; 4 heads, 2 key/value
    heads) on (tp 2, pp 2): gradients and losses equal the whole model's (token mean)."""
    pytest.importorskip("transformers")
    argv = _args("--model", "examples/hf_llama.py:build", "--schedule", "zb-h1", "--ranks",
                 "4", "--tp", "2", "--microbatches", "4", "--microbatch-size", "2")
    err = _check(argv, dp=1, tp=2, pp=2)
    assert FALLBACK in err


@pytest.mark.distributed
@pytest.mark.slow
def test_tp_checkpoint_resumes_exactly_and_on_tp1(tmp_path) -> None:
    """Saved at step 2 of 4 under (tp 2, pp 2) with DCP: resuming there gives the
    uninterrupted run's losses for steps 3 and 4; so does resuming on tp 1 (DCP reshards)."""
    base = ["--schedule", "1f1b", "--microbatches", "4", "--microbatch-size", "2", "--json",
            "--timeout", "120", *TINY]
    tp2 = [*base, "--ranks", "4", "--tp", "2"]
    # the uninterrupted run saves after steps 2 and 4; the resumes start from step 2's
    whole = _run([*tp2, "--steps", "4", "--save", str(tmp_path), "--save-every", "2"])[0]
    at2 = str(tmp_path / "step-00000002")
    again = _run([*tp2, "--steps", "4", "--resume", at2])[0]["loss"]
    assert again == pytest.approx(whole["loss"][2:], abs=1e-6)
    tp1 = _run([*base, "--ranks", "2", "--steps", "4", "--resume", at2])[0]
    assert tp1["tp"] == 1 and tp1["loss"] == pytest.approx(whole["loss"][2:], abs=1e-5)


def test_tp_that_does_not_divide_the_heads_is_refused() -> None:
    """--tp 3 on 4 heads names the rule and the fix before any process starts."""
    with pytest.raises(SpecError, match=r"--tp 3 must divide the heads \(4\)"):
        _plan(["--schedule", "1f1b", "--ranks", "6", "--tp", "3", "--microbatches", "4",
               *TINY])


def test_tp_with_emulated_passes_or_a_bad_mesh_is_refused() -> None:
    """--tp needs real layers and no fill; ranks must be a multiple of dp * tp."""
    with pytest.raises(SpecError, match="emulated passes"):
        _plan(["--schedule", "1f1b", "--ranks", "4", "--tp", "2", "--microbatches", "4",
               "--emulate-ms", "5"])
    with pytest.raises(SpecError, match="--fill with --tp 2 is not built"):
        _plan(["--schedule", "1f1b", "--ranks", "4", "--tp", "2", "--microbatches", "4",
               "--fill", "eval"])
    with pytest.raises(SpecError, match="divisible by dp \\* tp"):
        _plan(["--schedule", "1f1b", "--ranks", "6", "--dp", "2", "--tp", "2",
               "--microbatches", "4"])


def test_plans_shard_the_gpt_block_and_a_width_that_does_not_divide_is_refused() -> None:
    """Every block of the small GPT has a plan; a width tp does not divide is named."""
    from pipeblocks.models.gpt import GPTConfig, TinyGPT
    from pipeblocks.runtime.tensor_parallel import planned_layers

    model = TinyGPT(GPTConfig(vocab=64, seq=8, dim=32, heads=4, layers=3))
    assert planned_layers(model, 2) == 3
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 4))
    assert planned_layers(mlp, 2, {"Sequential": {"0": "colwise", "1": "rowwise"}}) == 1
    with pytest.raises(SpecError, match=r"Sequential.0 \(6 features\) evenly: --tp 4"):
        planned_layers(mlp, 4, {"Sequential": {"0": "colwise", "1": "rowwise"}})


def test_a_model_without_a_plan_is_refused() -> None:
    """HF GPT-2's blocks have no plan here: --tp says so and names the plans there are."""
    pytest.importorskip("transformers")
    with pytest.raises(SpecError, match="no layer of the model has a tensor-parallel plan "
                                        r"\(plans for: Block, LlamaDecoderLayer\)"):
        _plan(["--model", "examples/hf_gpt2.py:build", "--schedule", "1f1b", "--ranks", "4",
               "--tp", "2", "--microbatches", "4"])
