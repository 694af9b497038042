"""The frontier between a stage's input path and its parameter branches (the B/W split's core).

B asks the autograd engine for the stage input's gradient only, and captures on the way the
gradient arriving at each *frontier node*: a node on the output-to-input path with a branch to
parameters that does not lead back to the input (a linear layer's ``Addmm``, a layer norm).
W then runs only the parameter branches from those gradients: the input path is never
computed twice. A frontier node of the plain kinds (a linear layer's matrix product, a layer
norm, with the parameters right below it) W computes itself from the node's saved tensors
(:mod:`pipeblocks.runtime.direct`); any other it feeds back to the engine
(``GradientEdge`` roots, the parameters as targets). A :class:`Planner` finds the frontier
of each graph; :class:`WeightPass` runs W.

Note "plan cache": every microbatch of a stage builds a new graph, but almost always one of
the same shape. Finding the frontier (a post-order analysis, about 0.15 ms per transformer
block in Python) is therefore done once per shape. Each graph is still walked once, breadth
first (about a third of the analysis' cost, mostly creating the Python objects of its nodes),
recording a *signature*: every node's type and its children as (position in the walk, input
slot), and each leaf as the stage input, a parameter (its identity) or another leaf. Two
graphs with equal signatures are the same graph up to the node objects (same types, same
edges, same parameters), so the frontier found in one is, by position, the frontier of the
other. A new signature (an input shape that changes the graph, a data-dependent branch) is
analysed afresh and remembered too. The walk cannot be skipped without giving up that proof:
any part of the graph left unseen could route a gradient to another parameter.

    >>> import torch
    >>> lin = torch.nn.Linear(3, 3)
    >>> planner = Planner({id(q) for q in lin.parameters()})
    >>> for _ in range(2):
    ...     x = torch.randn(2, 3, requires_grad=True)
    ...     p = planner.plan(torch.tanh(lin(x)), x)
    >>> [type(e.node).__name__ for e in p.edges], [k.__name__ for _, k, _ in p.shape.direct]
    (['AddmmBackward0'], ['_addmm'])
    >>> p.shape.custom, p.shape.linked, planner.misses, planner.hits
    ('', True, 1, 1)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node

from pipeblocks.runtime.direct import Kernel, hooked, kernel, recipe

__all__ = ["Shape", "Plan", "Planner", "WeightPass", "engine_backward", "Grads"]

Grads = tuple[torch.Tensor | None, ...]


def engine_backward(
    roots: Sequence[torch.Tensor | GradientEdge],
    grads: Sequence[torch.Tensor | None],
    inputs: Sequence[torch.Tensor | GradientEdge],
    accumulate: bool,
) -> tuple[torch.Tensor | None, ...]:
    """One autograd engine call, graph kept. ``accumulate``: into ``.grad`` (else returned).

    It calls the engine directly: the public ``torch.autograd.grad`` wrapper costs about 40 us
    of Python per call, a large share of a small stage's W (one call per frontier level). A
    missing gradient is ones (a scalar loss); only tensor roots may miss one.
    """
    filled = tuple(
        g if g is not None else torch.ones_like(r)  # type: ignore[arg-type]
        for r, g in zip(roots, grads, strict=True)
    )
    return _ENGINE.run_backward(  # type: ignore[no-any-return]
        tuple(roots), filled, True, False, tuple(inputs), True, accumulate
    )


_ENGINE = torch.autograd.Variable._execution_engine  # type: ignore[attr-defined]
_ACC_TYPE = type(torch.zeros((), requires_grad=True).view(()).grad_fn.next_functions[0][0])  # type: ignore[union-attr]
_CUSTOM = torch.autograd.function.BackwardCFunction
_make_tuple = tuple.__new__


def _edge(node: Node, slot: int) -> GradientEdge:
    # what GradientEdge(node, slot) builds, without the named tuple's Python-level __new__
    # (1.3 us against 0.3 us, per frontier edge and microbatch)
    return _make_tuple(GradientEdge, (node, slot, None))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, eq=False)
class Shape:
    """A graph's frontier by position (see the note "plan cache"); shared by equal graphs.

    ``slots`` are the frontier nodes' input slots, as (position in the walk, slot): B
    captures the gradient at each. ``levels`` are (level, edge indices, parameters) of the
    single-node groups, by level; groups of one level never lie on each other's input path,
    so W runs a whole level, over every segment, in one engine call. ``pinned`` are merged
    groups (a weight used by several frontier nodes) as (edge indices per node, parameters):
    one call each, every node pinned to its recorded gradient. ``direct`` are single-node
    groups W runs without the engine, as (edge index, kind, parameters) of
    :func:`pipeblocks.runtime.direct.recipe`; they are in no level. ``custom`` names a custom
    autograd Function in the graph ("" if none); ``linked``: the root reaches the input.
    """

    slots: tuple[tuple[int, int], ...]
    levels: tuple[tuple[int, tuple[int, ...], tuple[nn.Parameter, ...]], ...]
    pinned: tuple[tuple[tuple[tuple[int, ...], ...], tuple[nn.Parameter, ...]], ...]
    direct: tuple[tuple[int, Kernel, tuple[nn.Parameter, ...]], ...]
    custom: str
    linked: bool
    loose: tuple[int, ...] = ()  # roots (by position) off the input path reaching parameters
    loose_tops: tuple[int, ...] = ()  # the same as positions among the graph's tops


@dataclass(slots=True)
class Plan:
    """One graph's frontier: its edges (where B records gradients) and their :class:`Shape`."""

    edges: list[GradientEdge]
    shape: Shape


_UNLINKED = Shape((), (), (), (), "", False)


class Planner:
    """Finds the frontier of one segment's graphs, analysing each graph shape once.

    ``param_ids``: ``id`` of every parameter the graphs may reach (the stage's; the caller
    keeps them alive, so an id cannot be reused). At most ``capacity`` shapes are kept, the
    oldest dropped first. ``hits`` and ``misses`` count the plans served from it or analysed.
    ``direct=False`` leaves every frontier node to the engine (see :class:`~pipeblocks.runtime.
    stage.Stage` for when that is needed).
    """

    def __init__(self, param_ids: set[int], capacity: int = 8, direct: bool = True) -> None:
        self.param_ids = param_ids
        self.direct = direct
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._shapes: dict[tuple[Hashable, ...], Shape] = {}

    def plan(self, root: torch.Tensor | Sequence[torch.Tensor],
             inp: torch.Tensor | Sequence[torch.Tensor]) -> Plan:
        """The frontier between the graph of ``root`` (one tensor or several) and the leaves
        ``inp`` (one or several; see the note "plan cache")."""
        roots = [root] if isinstance(root, torch.Tensor) else list(root)
        inps = {id(t) for t in ([inp] if isinstance(inp, torch.Tensor) else inp)}
        tops: list[Node] = []
        for r in roots:
            if r.grad_fn is not None and r.grad_fn not in tops:
                tops.append(r.grad_fn)
        if not tops:
            return Plan([], _UNLINKED)
        nodes, sig = _walk(tops, inps, self.param_ids)
        sig.extend(tops.index(r.grad_fn) if r.grad_fn is not None else -1 for r in roots)
        key = tuple(sig)
        shape = self._shapes.get(key)
        if shape is None:
            self.misses += 1
            shape = _analyse(tops, inps, self.param_ids, {n: i for i, n in enumerate(nodes)},
                             self.direct)
            loose = tuple(k for k, r in enumerate(roots)
                          if r.grad_fn is not None and r.grad_fn in _loose_nodes(shape, tops))
            shape = dataclasses.replace(shape, loose=loose, loose_tops=())
            if len(self._shapes) >= self.capacity:
                del self._shapes[next(iter(self._shapes))]
            self._shapes[key] = shape
        else:
            self.hits += 1
        return Plan([_edge(nodes[i], k) for i, k in shape.slots], shape)


def _loose_nodes(shape: Shape, tops: list[Node]) -> set[Node]:
    return {tops[i] for i in shape.loose_tops}


def _walk(tops: list[Node], inps: set[int], param_ids: set[int]
          ) -> tuple[list[Node], list[Hashable]]:
    """Every node below ``tops`` in breadth-first order, and the graph's signature.

    The signature lists, node by node in that order, its type and then each child as
    (position, input slot), or None for a missing edge; a leaf (``AccumulateGrad``, which has
    no children) is followed by the ``id`` of its tensor if that is a parameter, -1 if it is
    one of ``inps``, -2 otherwise (the analysis treats all other leaves alike). It determines
    the graph up to the node objects: positions follow from the order.
    """
    nodes = list(tops)
    pos = {t: i for i, t in enumerate(tops)}
    sig: list[Hashable] = [len(tops)]
    append, acc = sig.append, _ACC_TYPE
    for node in nodes:  # grows while it is read: a breadth-first queue
        kind = type(node)
        append(kind)
        if kind is acc:
            var = node.variable  # type: ignore[attr-defined]
            key = id(var)
            append(key if key in param_ids else -1 if key in inps else -2)
            continue
        for child, slot in node.next_functions:
            if child is None:
                append(None)
                continue
            at = pos.get(child)
            if at is None:
                at = pos[child] = len(nodes)
                nodes.append(child)
            append(at)
            append(slot)
    return nodes, sig


def _analyse(
    tops: list[Node], inps: set[int], param_ids: set[int], pos: dict[Node, int],
    own_w: bool = True,
) -> Shape:
    """Find the frontier of the graph below ``tops``, by the positions ``pos`` of its nodes.

    One post-order pass: a node is *on the path* when it leads to ``inp``; a node off the
    path *reaches* the parameters below it. A node on the path with a child off the path that
    reaches parameters is a frontier node; its *level* is the largest number of frontier
    nodes below it on the path, so a frontier node never sits on the input path of another
    one of its level. Frontier nodes whose parameter sets overlap merge into one group. With
    ``own_w``, a single-node group of a plain kind gets its direct recipe
    (:func:`pipeblocks.runtime.direct.recipe`) and no level. A top off the path that reaches
    parameters is *loose*: W starts from it.
    """
    seen: dict[Node, tuple[bool, int, frozenset[int]]] = {}  # on path, level, reach
    front: dict[Node, frozenset[int]] = {}
    params: dict[int, nn.Parameter] = {}
    custom: list[str] = []
    empty: frozenset[int] = frozenset()

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
                got = (key in inps, 0, frozenset((key,)))
            else:
                got = (key in inps, 0, empty)
            seen[node] = got
            return got
        if isinstance(node, _CUSTOM):
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
        linked = any([visit(top)[0] for top in tops])
    except RecursionError:
        seen.clear()
        front.clear()
        custom.clear()
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 1_000_000))
        try:
            linked = any([visit(top)[0] for top in tops])
        finally:
            sys.setrecursionlimit(limit)
    loose = tuple(i for i, top in enumerate(tops) if not seen[top][0] and seen[top][2])
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
    slots: list[tuple[int, int]] = []
    levels: dict[int, tuple[list[int], list[nn.Parameter]]] = {}
    pinned = []
    direct: list[tuple[int, Kernel, tuple[nn.Parameter, ...]]] = []
    for nodes, pids in groups:
        if not nodes:
            continue
        per_node = []
        for node in nodes:
            first = len(slots)
            n_in = len(node._input_metadata)  # type: ignore[attr-defined]
            slots.extend((pos[node], i) for i in range(n_in))
            per_node.append(tuple(range(first, len(slots))))
        ps_list = tuple(params[p] for p in sorted(pids))
        how = (recipe(nodes[0], pids)
               if own_w and len(nodes) == 1 and len(per_node[0]) == 1 else None)
        if how is not None:
            direct.append((per_node[0][0], kernel(how[0]), how[1]))
        elif len(nodes) == 1:
            idx, lps = levels.setdefault(seen[nodes[0]][1], ([], []))
            idx.extend(per_node[0])
            lps.extend(ps_list)
        else:
            pinned.append((tuple(per_node), ps_list))
    return Shape(
        tuple(slots),
        tuple((lv, tuple(idx), tuple(ps)) for lv, (idx, ps) in sorted(levels.items())),
        tuple(pinned),
        tuple(direct),
        custom[0] if custom else "",
        linked,
        loose_tops=loose,
    )


def _pinned(
    nodes: tuple[tuple[int, ...], ...],
    params: tuple[nn.Parameter, ...],
    edges: list[GradientEdge],
    caps: Grads,
) -> None:
    """One merged group: a frontier node below another one of the group would get the gradient
    again through the upper one, so each is pinned to what B recorded and counted once."""
    roots = [edges[i] for idx in nodes for i in idx if caps[i] is not None]
    grads = [caps[i] for idx in nodes for i in idx if caps[i] is not None]
    if not roots:
        return
    handles = [
        edges[idx[0]].node.register_prehook(lambda _g, s=tuple(caps[i] for i in idx): s)
        for idx in nodes
    ]
    try:
        engine_backward(roots, grads, params, accumulate=True)
    finally:
        for h in handles:
            h.remove()


def _direct(plan: Plan, caps: Grads) -> None:
    """The frontier nodes W runs without the engine (:mod:`pipeblocks.runtime.direct`); a
    node with a hooked parameter goes to the engine, so that its hooks see the gradient."""
    edges = plan.edges
    with torch.no_grad():
        for i, run, ps in plan.shape.direct:
            g = caps[i]
            if g is None:
                continue
            if hooked(ps):
                engine_backward([edges[i]], [g], ps, accumulate=True)
            else:
                run(edges[i].node, g, ps)


Level = tuple[tuple[tuple[int, tuple[int, ...]], ...], tuple[nn.Parameter, ...]]


def _merge(shapes: tuple[Shape, ...]) -> tuple[Level, ...]:
    """The levels of several segments' shapes merged by level: per level, in level order,
    (segment index, edge indices) for each segment that has it, and their parameters."""
    merged: dict[int, tuple[list[tuple[int, tuple[int, ...]]], dict[int, nn.Parameter]]] = {}
    for k, shape in enumerate(shapes):
        for level, idx, ps in shape.levels:
            parts, params = merged.setdefault(level, ([], {}))
            parts.append((k, idx))
            params.update((id(q), q) for q in ps)
    return tuple(
        (tuple(parts), tuple(params.values())) for _, (parts, params) in sorted(merged.items())
    )


class WeightPass:
    """W: run the parameter branches of one microbatch's segments from their captured
    gradients, into ``.grad``: the direct nodes without the engine, then one engine call per
    level over every segment, one per merged group. The merge of the levels is kept per combination of shapes (at most ``capacity``).
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._merged: dict[tuple[Shape, ...], tuple[Level, ...]] = {}

    def __call__(self, plans: Sequence[Plan], caps: Sequence[Grads]) -> None:
        key = tuple(p.shape for p in plans)
        levels = self._merged.get(key)
        if levels is None:
            if len(self._merged) >= self.capacity:
                del self._merged[next(iter(self._merged))]
            levels = self._merged[key] = _merge(key)
        for p, c in zip(plans, caps, strict=True):
            for nodes, ps in p.shape.pinned:
                _pinned(nodes, ps, p.edges, c)
            if p.shape.direct:
                _direct(p, c)
        for parts, params in levels:
            roots: list[GradientEdge] = []
            grads: list[torch.Tensor] = []
            for k, idx in parts:
                edges, got = plans[k].edges, caps[k]
                for i in idx:
                    g = got[i]
                    if g is not None:
                        roots.append(edges[i])
                        grads.append(g)
            if roots:
                _ENGINE.run_backward(tuple(roots), tuple(grads), True, False, params, True, True)
