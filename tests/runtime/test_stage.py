"""The stage wrapper: split B + W gives the fused backward's gradients, frees, and falls back."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest
import torch
from torch import nn

from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.split import ends_layout, split
from pipeblocks.runtime.stage import Stage, shared_parameters

pytestmark = pytest.mark.torch

CFG = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=4)


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _reference(module: nn.Module, xs, gys, last: bool, targets=None, scale=1.0):
    """Plain autograd over whole microbatches: input grads and accumulated parameter grads."""
    module.zero_grad(set_to_none=True)
    gxs = []
    for k, x in enumerate(xs):
        x = x.detach().requires_grad_(x.is_floating_point())
        out = module(x)
        if last:
            (lm_loss(out, targets[k]) * scale).backward()
        else:
            out.backward(gys[k])
        gxs.append(x.grad)
    grads = _grads(module)
    module.zero_grad(set_to_none=True)
    return gxs, grads


def _stage_inputs(num_stages: int, mbs: int):
    model = TinyGPT(CFG, seed=1)
    stages = split(model, num_stages, ends_layout(CFG.layers, num_stages))
    batches = [synthetic_batch(CFG, batch=3, seed=2, step=k) for k in range(mbs)]
    xs_per_stage = [[tok for tok, _ in batches]]
    with torch.no_grad():
        for st in stages[:-1]:
            xs_per_stage.append([st(x) for x in xs_per_stage[-1]])
    return stages, xs_per_stage, [t for _, t in batches]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_split_matches_fused_on_every_kind_of_stage(index: int) -> None:
    """First, middle and last GPT stages: B + W (in a shuffled order) equal plain autograd."""
    stages, xs, targets = _stage_inputs(3, 3)
    module, last = stages[index], index == 2
    gen = torch.Generator().manual_seed(index)
    gys = [torch.randn(x.shape[0], CFG.seq, CFG.dim, generator=gen) for x in xs[0]]
    ref_gx, ref_grads = _reference(module, xs[index], gys, last, targets, scale=1 / 3)
    st = Stage(module, index, 3, loss_fn=lm_loss)
    for k, x in enumerate(xs[index]):
        st.forward(k, x, targets[k], scale=1 / 3)
    gx = {}
    for k in (1, 0, 2):
        gx[k] = st.backward_input(k, None if last else gys[k])
        if k == 0:
            assert all(p.grad is None for p in module[1:].parameters()), "B touched weights"
    for k in (2, 0, 1):
        st.backward_weight(k)
    assert st.pending() == 0
    got = _grads(module)
    assert got.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=name)
    for k in range(3):
        if index == 0:
            assert gx[k] is None
        else:
            torch.testing.assert_close(gx[k], ref_gx[k], rtol=1e-5, atol=1e-6)


def test_fused_pass_matches_autograd_and_mixes_with_split() -> None:
    """BW on some microbatches and B + W on others accumulate the same gradients."""
    stages, xs, _ = _stage_inputs(2, 2)
    module = stages[1][:-1]  # blocks only: not the last stage, so it takes an output gradient
    gys = [torch.full((3, CFG.seq, CFG.dim), 0.5 + k) for k in range(2)]
    ref_gx, ref_grads = _reference(module, xs[1], gys, last=False)
    st = Stage(module, 1, 3)
    for k in range(2):
        st.forward(k, xs[1][k])
    gx0 = st.backward(0, gys[0])
    gx1 = st.backward_input(1, gys[1])
    st.backward_weight(1)
    torch.testing.assert_close(gx0, ref_gx[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx1, ref_gx[1], rtol=1e-5, atol=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(module.get_parameter(name).grad, g, rtol=1e-5, atol=1e-6)


class _Tied(nn.Module):
    """One weight used twice on the input path (a frontier group of two nodes)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.mid = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.mid(self.lin(x))))


class _Gru(nn.Module):
    """A GRU: a frontier node with several outputs (several captured gradient slots)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 6, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class _Ignores(nn.Module):
    """An output that does not depend on the input: no input gradient, weights still learn."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape) * 2


@pytest.mark.parametrize("make", [_Tied, _Gru, _Ignores, lambda: nn.Sequential(_Tied(), _Gru())])
def test_split_matches_fused_on_awkward_graphs(make) -> None:
    """Weights used twice, multi-output nodes, unused inputs, segments: same gradients."""
    torch.manual_seed(0)
    module = make()
    xs = [torch.randn(2, 3, 6) for _ in range(2)]
    gys = [torch.randn(2, 3, 6) for _ in range(2)]
    ref_gx, ref_grads = _reference(module, xs, gys, last=False)
    st = Stage(module, 1, 3)
    gx = []
    for k in range(2):
        st.forward(k, xs[k])
    for k in range(2):
        gx.append(st.backward_input(k, gys[k]))
    for k in range(2):
        st.backward_weight(k)
    for k in range(2):
        expect = ref_gx[k] if ref_gx[k] is not None else torch.zeros_like(xs[k])
        torch.testing.assert_close(gx[k], expect, rtol=1e-5, atol=1e-6)
    got = _grads(module)
    assert got.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_activations_are_freed_after_w() -> None:
    """After W the microbatch's saved tensors are gone (a weak reference dies)."""
    stages, xs, _ = _stage_inputs(2, 1)
    st = Stage(stages[1][:-1], 1, 3)
    out = st.forward(0, xs[1][0])
    seg_inp = st._pending[0].segments[0].ins[0]
    ref = weakref.ref(seg_inp)
    del seg_inp
    st.backward_input(0, torch.ones_like(out))
    gc.collect()
    assert ref() is not None, "W still needs the graph after B"
    st.backward_weight(0)
    gc.collect()
    assert ref() is None and st.pending() == 0


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x * 2

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g * 2


def test_custom_function_falls_back_to_fused_with_a_warning(caplog) -> None:
    """A custom autograd Function turns the split off with a warning; gradients stay right."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    module = nn.Sequential(lin, nn.Tanh())
    module.register_forward_hook(lambda m, i, o: _Double.apply(o))
    xs = [torch.randn(2, 4) for _ in range(2)]
    gys = [torch.ones(2, 4), torch.full((2, 4), 2.0)]
    ref_gx, ref_grads = _reference(module, xs, gys, last=False)
    st = Stage(module, 1, 3)
    for k in range(2):
        st.forward(k, xs[k])
    with caplog.at_level(logging.WARNING, logger="pipeblocks.runtime.stage"):
        gx = [st.backward_input(k, gys[k]) for k in range(2)]
    assert not st.split and "custom autograd Function (_DoubleBackward)" in caplog.text
    assert lin.weight.grad is not None  # B was the fused backward
    for k in range(2):
        st.backward_weight(k)  # no-op now
        torch.testing.assert_close(gx[k], ref_gx[k])
    for name, g in ref_grads.items():
        torch.testing.assert_close(module.get_parameter(name).grad, g)


def test_shared_parameters_names_the_tied_stages() -> None:
    """A weight held by two stages is reported for both, naming the parameter."""
    emb = nn.Embedding(8, 4)
    head = nn.Linear(4, 8, bias=False)
    head.weight = emb.weight
    why = shared_parameters({0: nn.Sequential(emb), 3: nn.Sequential(head), 1: nn.Linear(2, 2)})
    assert set(why) == {0, 3}
    assert "shared with stage 0" in why[3] and "'0.weight'" in why[3]


def test_out_of_order_passes_are_refused() -> None:
    """W before B, B twice, or a pass without its F raise errors that name the stage and mb."""
    st = Stage(nn.Linear(2, 2), 1, 3)
    with pytest.raises(Exception, match="stage 1: B of microbatch 0 has no activation"):
        st.backward_input(0, torch.ones(1, 2))
    out = st.forward(0, torch.ones(1, 2))
    with pytest.raises(Exception, match="W of microbatch 0 before its B"):
        st.backward_weight(0)
    st.backward_input(0, torch.ones_like(out))
    with pytest.raises(Exception, match="B of microbatch 0 ran twice"):
        st.backward_input(0, torch.ones_like(out))


class _Borrower(nn.Module):
    """Uses the weight of another child of the stage's Sequential (another segment)."""

    def __init__(self, lender: nn.Linear) -> None:
        super().__init__()
        self.lender = [lender]  # a plain list: the weight is not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.lender[0].weight)


def test_a_segment_using_another_segments_weight_gets_its_gradient() -> None:
    """Segments look for all of the stage's parameters, not just their own child's."""
    torch.manual_seed(0)
    first = nn.Linear(5, 5)
    module = nn.Sequential(first, nn.Tanh(), _Borrower(first))
    xs = [torch.randn(3, 5) for _ in range(2)]
    gys = [torch.randn(3, 5) for _ in range(2)]
    ref_gx, ref_grads = _reference(module, xs, gys, last=False)
    st = Stage(module, 1, 3)
    for k in range(2):
        st.forward(k, xs[k])
    gx = [st.backward_input(k, gys[k]) for k in range(2)]
    for k in range(2):
        st.backward_weight(k)
        torch.testing.assert_close(gx[k], ref_gx[k], rtol=1e-5, atol=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(module.get_parameter(name).grad, g, rtol=1e-5, atol=1e-6)
