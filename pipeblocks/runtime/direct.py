"""W without the engine: weight gradients straight from a frontier node's saved tensors.

The frontier nodes of most models are a linear layer's matrix product (``AddmmBackward0``,
``MmBackward0``) or a layer norm (``NativeLayerNormBackward0``). Their parameter side is one
or two kernels: ``g^T @ x`` and ``sum(g)`` for a linear layer, the layer norm's own
weight-and-bias backward. An autograd engine call to run them costs far more than the kernels
on a small stage (set-up, a walk of the graph below, one ``AccumulateGrad`` per parameter;
the note "cost" of :mod:`pipeblocks.runtime.stage`). So W runs them itself when the node's
parameter branch is exactly the plain pattern, and leaves every other node to the engine.

:func:`recipe` decides once per graph shape, from the node's type and children, that the
pattern holds: every off-path child is the parameter's own ``AccumulateGrad`` (through one
transpose for a linear layer's weight), so that no cast, view or other op sits between the
node and the parameter, and the node's parameter set is exactly those parameters.
:func:`kernel` then computes each gradient from the saved tensors and accumulates it as
``AccumulateGrad`` would (set if ``.grad`` is None, else added in place). A parameter with a
hook (``register_hook``, ``register_post_accumulate_grad_hook``; :func:`hooked`) must see its
gradient through the engine, so W asks the engine for that node.
Hooks on the parameter's ``AccumulateGrad`` node (from C++, as ``DistributedDataParallel``'s
reducer registers them) are invisible here: the stage turns this path off for them
(:class:`~pipeblocks.runtime.stage.Stage`, ``direct``).

    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> x = torch.randn(4, 3, requires_grad=True)
    >>> node = lin(x).grad_fn
    >>> kind, params = recipe(node, {id(q) for q in lin.parameters()})
    >>> kind, [tuple(q.shape) for q in params]
    ('addmm', [(2, 3), (2,)])
    >>> with torch.no_grad():
    ...     kernel(kind)(node, torch.ones(4, 2), params)
    >>> g = torch.ones(4, 2)
    >>> torch.allclose(lin.weight.grad, g.t() @ x.detach()), lin.bias.grad.tolist()
    (True, [4.0, 4.0])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.graph import Node

__all__ = ["recipe", "kernel", "hooked", "Kernel"]

_ACC = "AccumulateGrad"


def _param(child: Node | None, param_ids: set[int]) -> nn.Parameter | None:
    """The parameter whose ``AccumulateGrad`` ``child`` is, else None."""
    if child is None or type(child).__name__ != _ACC:
        return None
    var = child.variable  # type: ignore[attr-defined]
    return var if id(var) in param_ids else None


def _through_t(child: Node | None, param_ids: set[int]) -> nn.Parameter | None:
    """The parameter below ``child`` if ``child`` is a plain transpose of it, else None."""
    if child is None or type(child).__name__ != "TBackward0":
        return None
    (below, _), = child.next_functions
    return _param(below, param_ids)


def recipe(node: Node, group: set[int]) -> tuple[str, tuple[nn.Parameter, ...]] | None:
    """How to run ``node``'s parameter side directly, or None to leave it to the engine.

    ``group``: ids of the parameters the node's off-path children reach (its frontier group).
    The kind names the node's :func:`kernel`; the parameters are in the order it fills them.
    """
    kind = type(node).__name__
    kids = [c for c, _ in node.next_functions]
    got: tuple[nn.Parameter | None, ...]
    if kind == "AddmmBackward0" and len(kids) == 3:
        # addmm(bias, x, weight.t()): slot 0 the bias, slot 1 the input path, slot 2 weight.t()
        got = (_through_t(kids[2], group), _param(kids[0], group))
        name = "addmm"
    elif kind == "MmBackward0" and len(kids) == 2:
        got = (_through_t(kids[1], group),)  # mm(x, weight.t()): a linear layer without bias
        name = "mm"
    elif kind == "NativeLayerNormBackward0" and len(kids) == 3:
        got = (_param(kids[1], group), _param(kids[2], group))
        name = "layer_norm"
    else:
        return None
    if any(p is None for p in got):
        return None
    params = tuple(p for p in got if p is not None)
    if {id(p) for p in params} != group or len(params) != len(group):
        return None  # a parameter reached some other way (or twice): the engine does it
    if not all(p.is_contiguous() and p.layout == torch.strided for p in params):
        return None
    return name, params


def _hooked(p: nn.Parameter) -> bool:
    return bool(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None))


def _set_or_add(p: nn.Parameter, grad: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = grad
    else:
        p.grad.add_(grad)


def _weight(p: nn.Parameter, g: torch.Tensor, x: torch.Tensor, alpha: float = 1) -> None:
    """``p.grad += alpha * g^T @ x`` as one kernel (``addmm_``), or set it if None."""
    if p.grad is None:
        p.grad = torch.mm(g.t(), x) if alpha == 1 else torch.mm(g.t(), x).mul_(alpha)
    else:
        p.grad.addmm_(g.t(), x, alpha=alpha)


def _addmm(node: Node, g: torch.Tensor, params: tuple[nn.Parameter, ...]) -> None:
    weight, bias = params
    _weight(weight, g, node._saved_mat1, node._saved_alpha)  # type: ignore[attr-defined]
    beta = node._saved_beta  # type: ignore[attr-defined]
    gb = g.sum(0) if g.dim() == 2 and bias.dim() == 1 else g.sum_to_size(bias.shape)
    if beta != 1:
        gb = gb * beta
    elif gb.data_ptr() == g.data_ptr():
        gb = gb.clone()  # nothing to sum (a full-size bias): never keep or change g itself
    _set_or_add(bias, gb)


def _mm(node: Node, g: torch.Tensor, params: tuple[nn.Parameter, ...]) -> None:
    _weight(params[0], g, node._saved_self)  # type: ignore[attr-defined]


_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward.default
_LN_MASK = [False, True, True]


def _layer_norm(node: Node, g: torch.Tensor, params: tuple[nn.Parameter, ...]) -> None:
    weight, bias = params
    _, gw, gb = _LN_BACKWARD(
        g,
        node._saved_input,  # type: ignore[attr-defined]
        node._saved_normalized_shape,  # type: ignore[attr-defined]
        node._saved_result1,  # type: ignore[attr-defined]
        node._saved_result2,  # type: ignore[attr-defined]
        node._saved_weight,  # type: ignore[attr-defined]
        node._saved_bias,  # type: ignore[attr-defined]
        _LN_MASK,
    )
    _set_or_add(weight, gw)
    _set_or_add(bias, gb)


Kernel = Callable[[Node, torch.Tensor, tuple[nn.Parameter, ...]], None]
_RUN: dict[str, Kernel] = {"addmm": _addmm, "mm": _mm, "layer_norm": _layer_norm}


def kernel(kind: str) -> Kernel:
    """The function that accumulates a ``kind`` node's parameter gradients (grad mode off)."""
    return _RUN[kind]


def hooked(params: tuple[nn.Parameter, ...]) -> bool:
    """Whether a parameter has a hook, so that its gradient must go through the engine."""
    return any(_hooked(p) for p in params)
