"""The frontier planner: the plan cache is exact, and split B + W equals the fused backward."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pipeblocks.runtime.frontier import Planner
from pipeblocks.runtime.stage import Stage

pytestmark = pytest.mark.torch

WIDTH = 5


class _Op(nn.Module):
    """One random layer; ``kind`` says which (see ``KINDS``)."""

    def __init__(self, kind: str, lender: nn.Linear | None) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.alt = nn.Parameter(torch.randn(WIDTH, WIDTH) * 0.3)
        self.norm = nn.LayerNorm(WIDTH)
        self.lender = [lender]  # a plain list: another layer's Linear, not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "linear":
            return torch.tanh(self.lin(x))
        if k == "residual":
            return x + self.lin(self.norm(x))
        if k == "twice":  # one weight twice on the input path: a merged (pinned) group
            return self.lin(torch.tanh(self.lin(x)))
        if k == "choose":  # data-dependent: the same graph size, another parameter
            w = self.lin.weight if float(x.detach().sum()) > 0 else self.alt
            return torch.tanh(x @ w)
        if k == "grow":  # data-dependent: another graph size
            h = self.lin(x)
            return h * torch.sigmoid(h) if float(x.detach().mean()) > 0 else torch.tanh(h)
        if k == "borrow":  # an earlier layer's weight (another segment's, in a Sequential)
            w = self.lender[0].weight if self.lender[0] is not None else self.alt
            return torch.tanh(x @ w) + x
        if k == "constant":  # the output does not depend on the input
            return self.alt.sum(0).expand_as(x) * 1.0
        raise AssertionError(k)


KINDS = ["linear", "residual", "twice", "choose", "grow", "borrow", "constant"]


def _net(kinds: list[str], seed: int, sequential: bool) -> nn.Module:
    torch.manual_seed(seed)
    ops: list[_Op] = []
    for kind in kinds:
        ops.append(_Op(kind, ops[0].lin if ops else None))
    if sequential:
        return nn.Sequential(*ops)

    class Flat(nn.Module):  # the same layers in one graph (no segments)
        def __init__(self) -> None:
            super().__init__()
            self.ops = nn.ModuleList(ops)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for op in self.ops:
                x = op(x)
            return x

    return Flat()


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _fused_reference(module, xs, gys):
    """Plain autograd over the microbatches: input grads and accumulated parameter grads."""
    module.zero_grad(set_to_none=True)
    gxs = []
    for x, gy in zip(xs, gys, strict=True):
        x = x.detach().requires_grad_(True)
        module(x).backward(gy)
        gxs.append(x.grad if x.grad is not None else torch.zeros_like(x))
    grads = _grads(module)
    module.zero_grad(set_to_none=True)
    return gxs, grads


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    sequential=st.booleans(),
    shapes=st.lists(st.sampled_from([(2, WIDTH), (3, WIDTH), (2, 3, WIDTH)]), min_size=2,
                    max_size=4),
)
def test_split_equals_fused_on_random_graphs(kinds, seed, sequential, shapes) -> None:
    """Random layer stacks, microbatches of several shapes and signs, B and W in shuffled
    order: input and parameter gradients equal plain autograd, and B touches no weight."""
    module = _net(kinds, seed, sequential)
    gen = torch.Generator().manual_seed(seed)
    # the sign alternates so "choose" and "grow" take both branches across microbatches
    xs = [torch.randn(s, generator=gen) + (1.0 if k % 2 else -1.0) for k, s in enumerate(shapes)]
    gys = [torch.randn(s, generator=gen) for s in shapes]
    ref_gx, ref_grads = _fused_reference(module, xs, gys)
    stage = Stage(module, 1, 3)
    for k, x in enumerate(xs):
        stage.forward(k, x)
    order = list(range(len(xs)))
    order = order[1::2] + order[::2]
    gx = {}
    for k in order:
        gx[k] = stage.backward_input(k, gys[k])
        assert all(p.grad is None for p in module.parameters()), "B computed a weight gradient"
    for k in reversed(order):
        stage.backward_weight(k)
    assert stage.pending() == 0 and stage.split
    for k in range(len(xs)):
        torch.testing.assert_close(gx[k], ref_gx[k], rtol=1e-5, atol=1e-6)
    # a layer below one whose output ignores its input gets zeros from the stage (as from its
    # fused backward) where plain autograd leaves None
    got = _grads(module)
    for name, p in module.named_parameters():
        want = ref_grads.get(name, torch.zeros_like(p))
        torch.testing.assert_close(got.get(name, torch.zeros_like(p)), want, rtol=1e-5,
                                   atol=1e-6, msg=name)


def _graph(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inp = x.detach().requires_grad_(True)
    return module(inp), inp


def test_planner_reuses_a_shape_and_points_at_the_new_graph() -> None:
    """A second graph of the same shape is a hit, and its edges are that graph's own nodes."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    planner = Planner({id(p) for p in module.parameters()})
    out1, inp1 = _graph(module, torch.randn(2, 4))
    out2, inp2 = _graph(module, torch.randn(2, 4))
    p1, p2 = planner.plan(out1, inp1), planner.plan(out2, inp2)
    assert (planner.misses, planner.hits) == (1, 1) and p1.shape is p2.shape
    assert [type(e.node).__name__ for e in p2.edges] == ["AddmmBackward0", "AddmmBackward0"]
    assert out2.grad_fn in {e.node for e in p2.edges}  # the top Linear's Addmm: out2's node
    assert {e.node for e in p1.edges}.isdisjoint({e.node for e in p2.edges})


def test_planner_tells_apart_graphs_that_differ_only_in_a_parameter() -> None:
    """Same node types and count, another weight: a new shape, with that weight in W."""
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3, 3))
    planner = Planner({id(a), id(b)})
    shapes = []
    for w in (a, b, a):
        inp = torch.randn(2, 3, requires_grad=True)
        shapes.append(planner.plan(torch.tanh(inp @ w), inp).shape)
    assert shapes[0] is not shapes[1] and shapes[0] is shapes[2]
    assert [ps for _, _, ps in shapes[1].levels] == [(b,)]
    assert (planner.misses, planner.hits) == (2, 1)


def test_planner_tells_apart_the_input_from_another_leaf() -> None:
    """A graph on another leaf than the stage input is not the same shape (nothing links)."""
    lin = nn.Linear(3, 3)
    planner = Planner({id(p) for p in lin.parameters()})
    inp, other = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    linked = planner.plan(lin(inp), inp)
    unlinked = planner.plan(lin(other), inp)
    assert linked.shape.linked and not unlinked.shape.linked and planner.misses == 2


def test_planner_keeps_at_most_capacity_shapes() -> None:
    """The oldest shape is dropped first: it is analysed again when it comes back."""
    lins = [nn.Linear(3, 3) for _ in range(3)]
    planner = Planner({id(p) for lin in lins for p in lin.parameters()}, capacity=2)
    for lin in (*lins, lins[2], lins[0]):
        inp = torch.randn(2, 3, requires_grad=True)
        planner.plan(lin(inp), inp)
    assert (planner.misses, planner.hits) == (4, 1)


class _Count(TorchDispatchMode):
    """Counts the aten kernels that run while it is on (the engine runs CPU nodes in the
    calling thread, so it sees the backward's kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        # in-place and out-of-place adds both sum gradients (into .grad or a buffer); W's
        # addmm_ (a weight gradient accumulated into .grad in one kernel) is a matmul and an add
        name = func.overloadpacket.__name__.rstrip("_")
        for part in ("mm", "add") if name == "addmm" else (name,):
            self.ops[part] += 1
        return func(*args, **(kwargs or {}))


def test_split_runs_every_backward_kernel_once() -> None:
    """On a residual MLP B + W run exactly the fused backward's kernels (a second and third
    microbatch from the plan cache): nothing on the input path runs twice, and B runs no
    weight-gradient kernel (its matmuls are the input path's only)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 6))

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    module = nn.Sequential(Res(), nn.Linear(6, 6), nn.Tanh(), Res())
    fused = Stage(module, 1, 3, split=False)
    split = Stage(module, 1, 3)
    for mb in range(3):
        x, gy = torch.randn(4, 6), torch.randn(4, 6)
        module.zero_grad(set_to_none=True)
        fused.forward(0, x)
        with _Count() as bw:
            fused.backward(0, gy)
        module.zero_grad(set_to_none=True)
        split.forward(0, x)
        with _Count() as b:
            split.backward_input(0, gy)
        with _Count() as w:
            split.backward_weight(0)
        compute = {"mm", "tanh_backward", "sum", "add"}
        want = Counter({k: v for k, v in bw.ops.items() if k in compute})
        got = Counter({k: v for k, v in (b.ops + w.ops).items() if k in compute})
        assert got == want, (mb, got, want)
        # B: one matmul per Linear (grad_input); W: one per Linear (grad_weight)
        assert b.ops["mm"] == w.ops["mm"] == 5, (b.ops, w.ops, bw.ops)
    assert split._planners[0].hits == 2 and split._planners[3].hits == 2


def test_planner_treats_other_leaves_alike() -> None:
    """A fresh non-parameter leaf in every graph (not the input) does not defeat the cache."""
    lin = nn.Linear(3, 3)
    planner = Planner({id(p) for p in lin.parameters()})
    for _ in range(3):
        inp = torch.randn(2, 3, requires_grad=True)
        scale = torch.ones(3, requires_grad=True)  # a new leaf that requires grad, each time
        p = planner.plan(lin(inp) * scale, inp)
    assert (planner.misses, planner.hits) == (1, 2) and p.shape.linked
    assert [type(e.node).__name__ for e in p.edges] == ["AddmmBackward0"]


def test_stage_follows_a_data_dependent_branch_through_the_cache() -> None:
    """Microbatches alternate between two graphs of equal size that use different weights:
    two shapes are analysed, the rest come from the cache, and the gradients stay exact."""
    module = _net(["linear", "choose", "residual"], seed=3, sequential=True)
    xs = [torch.randn(3, WIDTH) + (2.0 if k % 2 else -2.0) for k in range(6)]
    gys = [torch.randn(3, WIDTH) for _ in xs]
    ref_gx, ref_grads = _fused_reference(module, xs, gys)
    stage = Stage(module, 1, 3)
    for k, x in enumerate(xs):
        stage.forward(k, x)
    gx = [stage.backward_input(k, gys[k]) for k in range(len(xs))]
    for k in range(len(xs)):
        stage.backward_weight(k)
    planner = stage._planners[1]  # the "choose" layer's segment
    assert (planner.misses, planner.hits) == (2, 4)
    for k in range(len(xs)):
        torch.testing.assert_close(gx[k], ref_gx[k], rtol=1e-5, atol=1e-6)
    got = _grads(module)
    assert got.keys() == ref_grads.keys() and {"1.lin.weight", "1.alt"} <= got.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6, msg=name)
