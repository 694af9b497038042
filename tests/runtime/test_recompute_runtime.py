"""Recomputation in the runtime: real gloo processes, gradients equal the whole model's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pipeblocks.generators import generate, names
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.launch import launch
from pipeblocks.runtime.recompute import RecomputeStage

WORKER = str(Path(__file__).with_name("recompute_worker.py"))
P, M, MBS = 4, 8, 2


def _reference(num_stages: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain autograd on the unpartitioned model: per-microbatch losses and the batch grads."""
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=num_stages)
    model = TinyGPT(cfg, seed=3)
    tokens, targets = synthetic_batch(cfg, M * MBS, seed=5, step=0)
    lm_loss(model(tokens), targets).backward()
    with torch.no_grad():
        per_mb = [lm_loss(model(t), y).item() for t, y in
                  zip(tokens.chunk(M), targets.chunk(M), strict=True)]
    return per_mb, {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def recompute_run(tmp_path_factory) -> dict:
    """One launch of 4 ranks: every generator with full and with even-stage recomputation."""
    out = tmp_path_factory.mktemp("rc") / "recompute.pt"
    res = launch([sys.executable, WORKER, str(out)], P, capture=True,
                 env={"PB_TEST_TIMEOUT": "120"}, grace=5, deadline=600)
    assert res.ok, "\n".join(res.stderr)
    return torch.load(out, weights_only=False)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("which", ["-r", "-r-even"])
def test_recompute_matches_single_process_reference(recompute_run, name: str,
                                                    which: str) -> None:
    """Losses and every gradient equal plain autograd on the whole model (max diff <= 1e-5)."""
    ref_losses, ref_grads = _reference(generate(name, P, M).spec.num_stages)
    per_rank = recompute_run[name + which]
    losses = [ls for ls, _ in per_rank if ls[0] is not None]
    assert len(losses) == 1
    assert max(abs(a - b) for a, b in zip(losses[0][0], ref_losses, strict=True)) <= 1e-5
    grads = {k: g for _, gs in per_rank for k, g in gs.items()}
    assert grads.keys() == ref_grads.keys()
    worst = max(float((grads[k] - g).abs().max()) for k, g in ref_grads.items())
    assert worst <= 1e-5, f"{name}{which}: max grad diff {worst}"


def test_recompute_stage_keeps_only_the_input_and_replays_dropout() -> None:
    """Between F and B nothing is saved but the input; with dropout on, B's recompute draws
    F's masks, so the gradients equal a plain stage's run with the same seed."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 8))
    x = torch.randn(4, 8)
    grads = []
    for cls in (RecomputeStage, RecomputeStage.__mro__[1]):
        net.zero_grad()
        torch.manual_seed(1)
        st = cls(net, stage=1, num_stages=3)
        out = st.forward(0, x)
        torch.manual_seed(99)  # other draws between F and B must not change the recompute
        torch.rand(3)
        gx = st.backward_input(0, torch.ones_like(out))
        st.backward_weight(0)
        grads.append([gx, *(p.grad.clone() for p in net.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.distributed
@pytest.mark.slow
def test_train_recompute_checks_grads_and_holds_less() -> None:
    """`pipeblocks train --recompute all --check-grads --memory`: gradients equal the whole
    model's and every rank's measured peak is below the same run's without recompute."""
    import json
    import subprocess

    def train(*extra: str) -> dict:
        argv = [sys.executable, "-m", "pipeblocks", "train", "--schedule", "gpipe", "--ranks",
                "2", "--microbatches", "4", "--steps", "1", "--check-grads", "--memory",
                "--json", *extra]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=240,
                             cwd=Path(__file__).resolve().parents[2])
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    plain, r = train(), train("--recompute", "all")
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
    assert all(a < b for a, b in zip(r["peak_activation_bytes"], plain["peak_activation_bytes"],
                                     strict=True))
