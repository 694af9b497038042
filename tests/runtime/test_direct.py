"""W without the engine: the direct weight gradients equal plain autograd, and run only where
the node's parameter branch is exactly the plain pattern."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pipeblocks.runtime.frontier as fr
from pipeblocks.runtime.direct import recipe
from pipeblocks.runtime.stage import Stage

pytestmark = pytest.mark.torch


class _Addmm(nn.Module):
    """``beta * bias + alpha * x @ weight.t()``: addmm with scalars other than 1."""

    def __init__(self, n_in: int, n_out: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in, dtype=torch.float64) * 0.3)
        self.bias = nn.Parameter(torch.randn(n_out, dtype=torch.float64))
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t(), beta=self.beta, alpha=self.alpha)


def _layer(kind: str, n_in: int, n_out: int, flat: bool) -> tuple[nn.Module, int]:
    """One layer and its output width; ``flat``: the input is 2-D (addmm needs it)."""
    if kind == "linear":
        return nn.Linear(n_in, n_out, dtype=torch.float64), n_out
    if kind == "linear_nobias":
        return nn.Linear(n_in, n_out, bias=False, dtype=torch.float64), n_out
    if kind == "norm":
        return nn.LayerNorm(n_in, dtype=torch.float64), n_in
    if kind == "norm_nobias":  # weight only: the engine's (slot 2 is empty)
        return nn.LayerNorm(n_in, bias=False, dtype=torch.float64), n_in
    if kind == "addmm" and flat:
        return _Addmm(n_in, n_out, alpha=1.5, beta=0.5), n_out
    return nn.Tanh(), n_in


KINDS = ["linear", "linear_nobias", "norm", "norm_nobias", "addmm", "tanh"]
DIRECT = {"linear", "linear_nobias", "norm", "addmm"}


def _grads_plain(module: nn.Module, xs: list[torch.Tensor], gys: list[torch.Tensor]) -> Any:
    module.zero_grad(set_to_none=True)
    gxs = []
    for x, gy in zip(xs, gys, strict=True):
        x = x.detach().requires_grad_(True)
        module(x).backward(gy)
        gxs.append(x.grad)
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    return gxs, grads


class _Counting:
    """The autograd engine with a call counter (for W's engine calls)."""

    def __init__(self) -> None:
        self.calls = 0

    def run_backward(self, *args: Any) -> Any:
        self.calls += 1
        return _REAL_ENGINE.run_backward(*args)


_REAL_ENGINE = fr._ENGINE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=5),
    widths=st.lists(st.integers(1, 6), min_size=5, max_size=5),
    lead=st.sampled_from([(3,), (1,), (2, 3), (2, 1, 2)]),
    seed=st.integers(0, 10_000),
    microbatches=st.integers(1, 3),
    sequential=st.booleans(),
)
def test_direct_weight_gradients_equal_autograd(
    kinds, widths, lead, seed, microbatches, sequential
) -> None:
    """Random stacks of linear layers (with and without bias, addmm with alpha and beta),
    layer norms and tanh, on 1 to 3 leading dims, accumulated over microbatches: split B + W
    gives plain autograd's gradients, and W calls the engine only for the layers that are not
    of the plain pattern."""
    torch.manual_seed(seed)
    flat = len(lead) == 1
    layers, n = [], widths[0]
    for kind, n_out in zip(kinds, widths[1:] + [widths[0]], strict=False):
        layer, n = _layer(kind, n, n_out, flat)
        layers.append(layer)
    module: nn.Module = nn.Sequential(*layers) if sequential else nn.Sequential(
        _Flat(layers))
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*lead, widths[0], generator=gen, dtype=torch.float64)
          for _ in range(microbatches)]
    with torch.no_grad():
        shapes = [module(x).shape for x in xs]
    gys = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ref_gx, ref_grads = _grads_plain(module, xs, gys)
    stage = Stage(module, 1, 3)
    counting = _Counting()
    gx = []
    for k, x in enumerate(xs):
        stage.forward(k, x)
        gx.append(stage.backward_input(k, gys[k]))
    fr._ENGINE = counting
    try:
        for k in range(len(xs)):
            stage.backward_weight(k)
    finally:
        fr._ENGINE = _REAL_ENGINE
    for got, want in zip(gx, ref_gx, strict=True):
        torch.testing.assert_close(got, want)
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], msg=name)
    used = {type(m) for m in module.modules()}
    engine_kinds = {nn.LayerNorm} if any(k == "norm_nobias" for k in kinds) else set()
    if not engine_kinds & used:
        assert counting.calls == 0, (kinds, counting.calls)


class _Flat(nn.Module):
    """The layers in one graph (no segments)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _frontier_node(out: torch.Tensor, inp: torch.Tensor, params: set[int]) -> Any:
    plan = fr.Planner(params).plan(out, inp)
    (edge,) = plan.edges
    return edge.node, plan.shape


def test_recipe_takes_the_plain_patterns() -> None:
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    node, shape = _frontier_node(lin(x), x, {id(p) for p in lin.parameters()})
    assert recipe(node, {id(p) for p in lin.parameters()}) == ("addmm", (lin.weight, lin.bias))
    assert len(shape.direct) == 1 and shape.levels == ()
    norm = nn.LayerNorm(3)
    node, _ = _frontier_node(norm(x), x, {id(p) for p in norm.parameters()})
    assert recipe(node, {id(p) for p in norm.parameters()}) == (
        "layer_norm", (norm.weight, norm.bias))


@pytest.mark.parametrize("case", ["cast", "view", "transposed", "norm_nobias", "extra"])
def test_recipe_leaves_other_branches_to_the_engine(case: str) -> None:
    """A cast, a view or a non-contiguous parameter between the node and the parameter, a
    missing bias slot, or a parameter the node's group reaches some other way: no recipe, the
    engine runs the node, and the gradients are still plain autograd's."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(2, 3))
    b = nn.Parameter(torch.randn(2))
    flat_w = nn.Parameter(torch.randn(6))
    wt = nn.Parameter(torch.randn(3, 2).t())  # non-contiguous
    extra = nn.Parameter(torch.randn(2))
    norm = nn.LayerNorm(3, bias=False)

    def f(x: torch.Tensor) -> torch.Tensor:
        if case == "cast":
            return F.linear(x, w.double().float(), b)
        if case == "view":
            return F.linear(x, flat_w.view(2, 3), b)
        if case == "transposed":
            return F.linear(x, wt, b)
        if case == "norm_nobias":
            return norm(x)
        return torch.addmm(b * extra, x, w.t())  # the bias slot is a product, not a leaf

    params = [w, b, flat_w, wt, extra, *norm.parameters()]
    x = torch.randn(4, 3, requires_grad=True)
    plan = fr.Planner({id(p) for p in params}).plan(f(x), x)
    assert plan.shape.direct == () and plan.shape.levels, case

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ps = nn.ParameterList(params[:5])
            self.norm = norm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return f(x)

    m = M()
    xs, gys = [torch.randn(4, 3)], [torch.randn(f(torch.randn(4, 3)).shape)]
    _, want = _grads_plain(m, xs, gys)
    st_ = Stage(m, 1, 3)
    st_.forward(0, xs[0])
    st_.backward_input(0, gys[0])
    st_.backward_weight(0)
    for name, p in m.named_parameters():
        if name in want and want[name] is not None:
            torch.testing.assert_close(p.grad, want[name], msg=name)


def test_a_full_size_bias_gets_its_own_gradient_tensor() -> None:
    """addmm with a bias as large as its output: the bias gradient is the captured gradient
    itself, unsummed; it is stored as a copy, so later accumulation changes nothing else."""
    torch.manual_seed(0)
    m = _Addmm(3, 2, alpha=1.0, beta=1.0)
    m.bias = nn.Parameter(torch.randn(4, 2, dtype=torch.float64))
    x, gy = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    st_ = Stage(m, 1, 3)
    st_.forward(0, x)
    st_.backward_input(0, gy)
    caps = st_._pending[0].segments[0].captured
    st_.backward_weight(0)
    assert all(m.bias.grad.data_ptr() != c.data_ptr() for c in caps if c is not None)
    torch.testing.assert_close(m.bias.grad, gy)


def test_hooked_parameters_see_their_gradient_once() -> None:
    """A parameter with a tensor hook or a post-accumulate hook goes through the engine, so
    each hook runs once per microbatch with the gradient plain autograd gives it."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    seen: dict[str, list[torch.Tensor]] = {"w": [], "b": []}
    lin.weight.register_hook(lambda g: seen["w"].append(g.clone()))
    lin.bias.register_post_accumulate_grad_hook(lambda p: seen["b"].append(p.grad.clone()))
    xs = [torch.randn(4, 3) for _ in range(2)]
    gys = [torch.randn(4, 2) for _ in range(2)]
    _, want = _grads_plain(lin, xs, gys)
    ref_w = [gy.t() @ x for x, gy in zip(xs, gys, strict=True)]
    seen["w"].clear()
    seen["b"].clear()
    st_ = Stage(lin, 1, 3)
    for k in range(2):
        st_.forward(k, xs[k])
        st_.backward_input(k, gys[k])
        assert (len(seen["w"]), len(seen["b"])) == (k, k), "B ran a weight hook"
        st_.backward_weight(k)
    assert len(seen["w"]) == 2 and len(seen["b"]) == 2
    for got, ref in zip(seen["w"], ref_w, strict=True):
        torch.testing.assert_close(got, ref)
    torch.testing.assert_close(seen["b"][1], want["bias"])
    torch.testing.assert_close(lin.weight.grad, want["weight"])


def test_direct_off_leaves_every_node_to_the_engine() -> None:
    """Stage(direct=False): no direct recipe, W through the engine, the same gradients; a node
    hook on a parameter's AccumulateGrad (invisible to the direct path) then runs."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    acc = lin.weight.view_as(lin.weight).grad_fn.next_functions[0][0]
    calls: list[int] = []
    handle = acc.register_hook(lambda *_: calls.append(1))
    x, gy = torch.randn(4, 3), torch.randn(4, 2)
    _, want = _grads_plain(lin, [x], [gy])
    calls.clear()
    st_ = Stage(lin, 1, 3, direct=False)
    st_.forward(0, x)
    st_.backward_input(0, gy)
    assert st_._pending[0].segments[0].plan.shape.direct == ()
    st_.backward_weight(0)
    handle.remove()
    assert calls == [1]
    torch.testing.assert_close(lin.weight.grad, want["weight"])
    torch.testing.assert_close(lin.bias.grad, want["bias"])


def test_a_ddp_module_keeps_its_reducer_hooks(tmp_path) -> None:
    """A stage holding DistributedDataParallel (gloo, one process) turns the direct path off,
    so DDP's reducer, which hooks each parameter's AccumulateGrad node, sees every gradient:
    its communication hook (called once a bucket's gradients are all in) runs in each W, and
    the gradients are plain autograd's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1, timeout=__import__("datetime").timedelta(seconds=30))
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        ddp = DistributedDataParallel(net)
        reduced: list[int] = []

        def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP reads real annotations
            reduced.append(1)
            fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, hook)
        st_ = Stage(ddp, 1, 3)
        assert not st_.direct
        for step in range(2):
            x, gy = torch.randn(5, 3), torch.randn(5, 2)
            ref = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
            ref.load_state_dict(net.state_dict())
            ref(x).backward(gy)
            net.zero_grad(set_to_none=True)
            st_.forward(0, x)
            st_.backward_input(0, gy)
            assert len(reduced) == step, "B reduced a weight gradient"
            st_.backward_weight(0)
            assert len(reduced) == step + 1, "W's gradients did not reach DDP's reducer"
            for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad, msg=name)
    finally:
        dist.destroy_process_group()
