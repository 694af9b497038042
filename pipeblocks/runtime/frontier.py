"""The frontier between a stage's input path and its parameter branches (the B/W split's core).

B asks the autograd engine for the stage input's gradient only, and captures on the way the
gradient arriving at each *frontier node*: a node on the output-to-input path with a branch to
parameters that does not lead back to the input (a linear layer's ``Addmm``, a layer norm).
W then feeds those gradients back into the frontier nodes (``GradientEdge`` roots) with the
parameters as targets, so the engine runs only the parameter branches: the input path is
never computed twice. :func:`plan` finds the frontier; :func:`weight_grads` runs W.

    >>> import torch
    >>> lin = torch.nn.Linear(3, 3)
    >>> x = torch.randn(2, 3, requires_grad=True)
    >>> p, custom, linked = plan(torch.tanh(lin(x)), x, {id(q) for q in lin.parameters()})
    >>> [type(e.node).__name__ for e in p.edges], sorted(p.levels), custom, linked
    (['AddmmBackward0'], [0], '', True)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node

__all__ = ["Plan", "plan", "weight_grads", "engine_backward", "Grads"]

Grads = tuple[torch.Tensor | None, ...]


def engine_backward(
    roots: Sequence[torch.Tensor | GradientEdge],
    grads: Sequence[torch.Tensor | None],
    inputs: Sequence[torch.Tensor],
    accumulate: bool,
) -> tuple[torch.Tensor | None, ...]:
    """One autograd engine call, graph kept. ``accumulate``: into ``.grad`` (else returned).

    It calls the engine directly: the public ``torch.autograd.grad`` wrapper costs about 40 us
    of Python per call, a large share of a small stage's W (one call per frontier level).
    """
    filled = tuple(
        torch.ones_like(r) if g is None and isinstance(r, torch.Tensor) else g
        for r, g in zip(roots, grads, strict=True)
    )
    return _ENGINE.run_backward(  # type: ignore[no-any-return]
        tuple(roots), filled, True, False, tuple(inputs), True, accumulate
    )


_ENGINE = torch.autograd.Variable._execution_engine  # type: ignore[attr-defined]


@dataclass(slots=True)
class Plan:
    """Where B records gradients and how W replays them, for one segment's graph.

    ``edges`` are the input slots of the frontier nodes (B captures the gradient at each).
    ``levels`` maps a level to (edge indices, parameters) of single-node groups; groups of one
    level never lie on each other's input path, so W runs a whole level, over every segment,
    in one engine call. ``pinned`` holds merged groups (a weight used by several frontier
    nodes): one call each, every node pinned to its recorded gradient.
    """

    edges: list[GradientEdge]
    levels: dict[int, tuple[list[int], list[nn.Parameter]]]
    pinned: list[tuple[list[tuple[Node, list[int]]], list[nn.Parameter]]]


_ACC_TYPE = type(torch.zeros((), requires_grad=True).view(()).grad_fn.next_functions[0][0])  # type: ignore[union-attr]


def plan(root: torch.Tensor, inp: torch.Tensor, param_ids: set[int]) -> tuple[Plan, str, bool]:
    """Find the frontier between the input path and the parameter branches of one graph.

    One post-order pass from ``root``: a node is *on the path* when it leads to ``inp``; a
    node off the path *reaches* the parameters below it. A node on the path with a child off
    the path that reaches parameters is a frontier node; its *level* is the largest number of
    frontier nodes below it on the path, so a frontier node never sits on the input path of
    another one of its level. Frontier nodes whose parameter sets overlap merge into one
    group. Returns the plan, the name of a custom autograd Function in the graph (or ""), and
    whether the root is on the path at all.
    """
    out = Plan([], {}, [])
    top = root.grad_fn
    if top is None:
        return out, "", False
    seen: dict[Node, tuple[bool, int, frozenset[int]]] = {}  # on path, level, reach
    front: dict[Node, frozenset[int]] = {}
    params: dict[int, nn.Parameter] = {}
    custom: list[str] = []
    empty: frozenset[int] = frozenset()
    cfn = torch.autograd.function.BackwardCFunction

    def visit(node: Node) -> tuple[bool, int, frozenset[int]]:
        # recursive: about twice as fast as an explicit stack in CPython, and Python-to-Python
        # calls use no C stack (3.11+), so only the recursion limit bounds the depth
        got = seen.get(node)
        if got is not None:
            return got
        if type(node) is _ACC_TYPE:
            var = node.variable  # type: ignore[attr-defined]
            key = id(var)
            if key in param_ids:
                params[key] = var
                got = (var is inp, 0, frozenset((key,)))
            else:
                got = (var is inp, 0, empty)
            seen[node] = got
            return got
        if isinstance(node, cfn):
            custom.append(type(node).__name__)
        path, lv, ps = False, 0, empty
        for c, _ in node.next_functions:
            if c is None:
                continue
            c_path, c_lv, c_reach = visit(c)
            if c_path:
                path = True
                if c in front:
                    c_lv += 1
                if c_lv > lv:
                    lv = c_lv
            elif c_reach:
                ps = ps | c_reach
        if path:
            if ps:
                front[node] = ps
            got = (True, lv, empty)
        else:
            got = (False, 0, ps)
        seen[node] = got
        return got

    try:
        linked = visit(top)[0]
    except RecursionError:
        seen.clear()
        front.clear()
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 1_000_000))
        try:
            linked = visit(top)[0]
        finally:
            sys.setrecursionlimit(limit)
    visit = None  # type: ignore[assignment]  # break the closure's cycle: free the graph now
    # merge frontier nodes that share parameters (union by parameter owner)
    owner: dict[int, int] = {}
    groups: list[tuple[list[Node], set[int]]] = []
    for node, ps in front.items():
        hits = sorted({owner[p] for p in ps if p in owner})
        if not hits:
            groups.append(([node], set(ps)))
            gi = len(groups) - 1
        else:
            gi = hits[0]
            for other in hits[1:]:
                groups[gi][0].extend(groups[other][0])
                groups[gi][1].update(groups[other][1])
                groups[other] = ([], set())
            groups[gi][0].append(node)
            groups[gi][1].update(ps)
        for p in groups[gi][1]:
            owner[p] = gi
    for nodes, pids in groups:
        if not nodes:
            continue
        slots = []
        for node in nodes:
            first = len(out.edges)
            n_in = len(node._input_metadata)  # type: ignore[attr-defined]
            out.edges.extend(GradientEdge(node, i) for i in range(n_in))
            slots.append((node, list(range(first, len(out.edges)))))
        ps_list = [params[p] for p in sorted(pids)]
        if len(nodes) == 1:
            idx, lps = out.levels.setdefault(seen[nodes[0]][1], ([], []))
            idx.extend(slots[0][1])
            lps.extend(ps_list)
        else:
            out.pinned.append((slots, ps_list))
    return out, (custom[0] if custom else ""), linked


def _pinned(
    nodes: list[tuple[Node, list[int]]],
    params: list[nn.Parameter],
    edges: list[GradientEdge],
    caps: tuple[torch.Tensor | None, ...],
) -> None:
    """One merged group: a frontier node below another one of the group would get the gradient
    again through the upper one, so each is pinned to what B recorded and counted once."""
    roots = [edges[i] for _, idx in nodes for i in idx if caps[i] is not None]
    grads = [caps[i] for _, idx in nodes for i in idx if caps[i] is not None]
    if not roots:
        return
    handles = [
        node.register_prehook(lambda _g, s=tuple(caps[i] for i in idx): s) for node, idx in nodes
    ]
    try:
        engine_backward(roots, grads, params, accumulate=True)
    finally:
        for h in handles:
            h.remove()


def weight_grads(plans: Sequence[tuple[Plan, Grads]]) -> None:
    """W: run the parameter branches of each (plan, captured gradients), into ``.grad``.

    One engine call per level over every plan (segment); one per merged group.
    """
    levels: dict[int, tuple[list[GradientEdge], list[torch.Tensor], dict[int, nn.Parameter]]]
    levels = {}
    for p, caps in plans:
        for level, (idx, ps) in p.levels.items():
            roots, grads, params = levels.setdefault(level, ([], [], {}))
            for i in idx:
                cap = caps[i]
                if cap is not None:
                    roots.append(p.edges[i])
                    grads.append(cap)
            params.update((id(q), q) for q in ps)
        for nodes, ps in p.pinned:
            _pinned(nodes, ps, p.edges, caps)
    for _, (roots, grads, params) in sorted(levels.items()):
        if roots:
            engine_backward(roots, grads, list(params.values()), accumulate=True)
