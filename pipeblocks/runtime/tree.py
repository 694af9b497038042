"""What travels between stages: a tensor, or a tuple, list or dict of them (any nesting).

A stage's output is flattened into its tensors (the *leaves*, in a fixed order) and a
*structure* that rebuilds it; only the leaves travel, the structure is agreed once per shape
(:func:`pipeblocks.runtime.p2p.agree_shapes`). A leaf that requires grad gets a gradient back;
an integer tensor, or one that needs none, travels without.

How a stage is called (:func:`call`): a tensor ``x`` as ``module(x)``, a tuple or list as
``module(*x)``, a dict as ``module(**x)``; the side inputs the module asks for (named
parameters of its ``forward``, or its ``side_inputs`` attribute) are added as keywords.

    >>> import torch
    >>> leaves, spec = flatten((torch.ones(2), {"mask": torch.zeros(2, dtype=torch.bool)}))
    >>> len(leaves), spec
    (2, ['tuple', [['leaf'], ['dict', ['mask'], [['leaf']]]]])
    >>> out = unflatten(spec, leaves)
    >>> type(out).__name__, sorted(out[1])
    ('tuple', ['mask'])
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pipeblocks.errors import PipeblocksError, SpecError

__all__ = ["flatten", "unflatten", "call", "wanted_side", "split_tree", "Structure"]

Structure = list[Any]  # ["leaf"] | ["tuple"|"list", [children]] | ["dict", [keys], [children]]


class StageOutputError(PipeblocksError, TypeError):
    """A stage returned something that cannot travel to the next stage."""


def flatten(obj: Any, where: str = "the stage output") -> tuple[list[torch.Tensor], Structure]:
    """The tensors of ``obj`` in order and the structure that rebuilds it (JSON-able)."""
    leaves: list[torch.Tensor] = []
    return leaves, _flatten(obj, leaves, where)


def _flatten(obj: Any, leaves: list[torch.Tensor], where: str) -> Structure:
    if isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return ["leaf"]
    if isinstance(obj, (tuple, list)):
        kind = "tuple" if isinstance(obj, tuple) else "list"
        return [kind, [_flatten(o, leaves, where) for o in obj]]
    if isinstance(obj, Mapping):
        keys = list(obj)
        if not all(isinstance(k, str) for k in keys):
            raise StageOutputError(f"{where} is a dict with keys {keys[:4]}; only string keys "
                                   f"can travel between stages (name the entries)")
        return ["dict", keys, [_flatten(obj[k], leaves, where) for k in keys]]
    raise StageOutputError(
        f"{where} holds a {type(obj).__name__}; between stages only tensors, and tuples, "
        f"lists or dicts of them, can travel (return tensors, or make it a constant of the "
        f"next stage)")


def unflatten(spec: Structure, leaves: Sequence[torch.Tensor]) -> Any:
    """The object :func:`flatten` took apart."""
    it = iter(leaves)
    out = _unflatten(spec, it)
    if next(it, None) is not None:
        raise PipeblocksError(f"structure {spec} takes fewer tensors than {len(leaves)}")
    return out


def _unflatten(spec: Structure, it: Any) -> Any:
    kind = spec[0]
    if kind == "leaf":
        return next(it)
    if kind == "dict":
        return {k: _unflatten(s, it) for k, s in zip(spec[1], spec[2], strict=True)}
    items = [_unflatten(s, it) for s in spec[1]]
    return tuple(items) if kind == "tuple" else items


def wanted_side(module: nn.Module, available: Sequence[str]) -> tuple[str, ...]:
    """The side inputs ``module`` asks for: its ``side_inputs`` attribute if it has one, those of
    its ``side_children()`` if it has them, else the names among ``available`` that are
    parameters of its ``forward`` (not ``**kwargs``)."""
    declared = getattr(module, "side_inputs", None)
    if declared is not None:
        return tuple(declared)
    children = getattr(module, "side_children", None)
    if callable(children):  # a container that hands each layer its own (runtime.fsdp)
        wanted = {n for c in children() for n in wanted_side(c, available)}
        return tuple(n for n in available if n in wanted)
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return ()
    named = {n for n, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return tuple(n for n in available if n in named)


def unfilled(module: nn.Module, x: Any, names: Sequence[str]) -> list[str]:
    """The required parameters of ``module.forward`` that neither ``x`` nor ``names`` fill."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return []
    args, kw = _args(x)
    try:
        bound = sig.bind_partial(*args, **kw, **{n: None for n in names})
    except TypeError:
        return []
    return [n for n, p in sig.parameters.items() if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in bound.arguments]


def _args(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(x, (tuple, list)):
        return tuple(x), {}
    if isinstance(x, Mapping):
        return (), dict(x)
    return (x,), {}


def call(module: nn.Module, x: Any, side: Mapping[str, Any], names: Sequence[str]) -> Any:
    """Run ``module`` on what the previous stage returned plus the side inputs ``names``."""
    kw = {n: side[n] for n in names}
    if isinstance(x, torch.Tensor):
        return module(x, **kw)
    if isinstance(x, (tuple, list)):
        return module(*x, **kw)
    if isinstance(x, Mapping):
        return module(**x, **kw)
    return module(x, **kw)


def split_tree(obj: Any, m: int, what: str) -> list[Any]:
    """``obj`` (a tensor or a structure of them) as m microbatches along dim 0."""
    leaves, spec = flatten(obj, what)
    parts = []
    for t in leaves:
        if t.dim() == 0 or t.shape[0] % m:
            rows = t.shape[0] if t.dim() else 0
            raise SpecError(
                f"the {what} of {rows} rows does not split into {m} equal microbatches; use "
                f"a batch size that is a multiple of {m}")
        parts.append(t.chunk(m, dim=0))
    return [unflatten(spec, [p[j] for p in parts]) for j in range(m)]
