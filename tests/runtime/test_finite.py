"""The non-finite watch (runtime/finite.py) costs the forward nothing autograd keeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeblocks.runtime.finite import first_bad, none, watch_outputs

pytestmark = pytest.mark.torch


def _saves(module: nn.Module, x: torch.Tensor) -> int:
    """How many tensors autograd saves for backward in one forward of ``module``."""
    count = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return count[0]


def test_the_watch_saves_nothing_for_backward_and_still_flags() -> None:
    """With the watch on, a forward saves exactly what it saved before (--memory counts every
    saved tensor), and an inf in the output is still flagged."""
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    x = torch.randn(2, 4, requires_grad=True)
    before = _saves(stage, x)
    flags = watch_outputs({1: stage}, torch.device("cpu"))
    assert _saves(stage, x) == before
    assert first_bad({1: stage}, flags, None, 2) == none(2)
    with torch.no_grad():
        stage[2].bias.fill_(float("inf"))
    stage(x)
    assert first_bad({1: stage}, flags, None, 2) == 1
