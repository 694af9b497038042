"""Autocast and activation checkpointing, with the B/W split: equal to the whole model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pipeblocks as pb
from pipeblocks.models.gpt import Block, GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.split import ends_layout, split

pytestmark = pytest.mark.torch

M = 4
CFG = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=4)


class Counted(nn.Module):
    """A block that counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def _pipeline(name: str, **options):
    model = TinyGPT(CFG, seed=2)
    parts = [Counted(p) if isinstance(p, Block) else p for p in model]
    schedule = pb.generate(name, 1, M)
    S = schedule.spec.num_stages
    stages = dict(enumerate(split(parts, S, ends_layout(CFG.layers, S))))
    return model, parts, Executor(schedule, stages, lm_loss, None, rank=0, **options)


def _reference(dtype: torch.dtype | None):
    ref = TinyGPT(CFG, seed=2)
    tokens, targets = synthetic_batch(CFG, M * 2, seed=1)
    for x, y in zip(tokens.chunk(M), targets.chunk(M), strict=True):  # per microbatch, as F
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = lm_loss(ref(x), y) / M
        loss.backward()
    return ref, tokens, targets


@pytest.mark.parametrize("name", ["zb-v", "zb-h1", "1f1b"])
def test_checkpointed_blocks_run_twice_and_gradients_are_exact(name: str) -> None:
    """Every block checkpointed: gradients equal the whole model (<= 1e-6), and each block's
    forward runs exactly twice per microbatch (F and one recompute, shared by B and W)."""
    model, parts, ex = _pipeline(name, checkpoint=lambda m: isinstance(m, Counted))
    ref, tokens, targets = _reference(None)
    ex.step(tokens, targets)  # the first step also runs the shape handshake
    blocks = [p for p in parts if isinstance(p, Counted)]
    before = [b.calls for b in blocks]
    ex.zero_grad()
    ex.step(tokens, targets)
    assert [b.calls - c for b, c in zip(blocks, before, strict=True)] == [2 * M] * len(blocks)
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=n)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_bf16_autocast_equals_the_whole_model_under_autocast(checkpoint: bool) -> None:
    """bf16 autocast on CPU (zb-v, B/W split), with and without checkpointing: gradients
    equal the whole model under the same autocast (<= 1e-6; measured 0) and differ from fp32
    (autocast is on); the gradients stay fp32."""
    select = (lambda m: isinstance(m, Counted)) if checkpoint else None
    model, _, ex = _pipeline("zb-v", autocast=torch.bfloat16, checkpoint=select)
    ref, tokens, targets = _reference(torch.bfloat16)
    ref32, _, _ = _reference(None)
    ex.step(tokens, targets)
    pairs = list(zip(model.parameters(), ref.parameters(), ref32.parameters(), strict=True))
    assert max(float((p.grad - q.grad).abs().max()) for p, q, _ in pairs) <= 1e-6
    assert max(float((p.grad - r.grad).abs().max()) for p, _, r in pairs) > 1e-5
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_checkpointing_holds_fewer_activations() -> None:
    """The bytes autograd holds per microbatch fall when every block is checkpointed."""
    tokens, targets = synthetic_batch(CFG, M * 2, seed=1)
    _, _, plain = _pipeline("zb-v", measure_memory=True)
    _, _, ckpt = _pipeline("zb-v", measure_memory=True, checkpoint=lambda m: isinstance(m, Counted))
    full = plain.step(tokens, targets).peak_activation_bytes
    assert 0 < ckpt.step(tokens, targets).peak_activation_bytes < full / 4
