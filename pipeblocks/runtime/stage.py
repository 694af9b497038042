"""One pipeline stage with per-microbatch F, B, W and BW passes (the B/W split).

- **F** runs the module; a stage that is not the first makes its input require grad. The last
  stage applies the loss and keeps ``loss * scale`` as the root of its backward.
- **B** is the gradient w.r.t. the stage's input only: the autograd engine then skips every
  weight-gradient kernel (a linear layer computes ``grad_input``, not ``grad_weight``). While
  it runs, a pre-hook records the gradient arriving at each *frontier* node: a node on the
  output-to-input path with a branch to parameters off that path (a linear layer's ``Addmm``,
  a layer norm's ``NativeLayerNorm``).
- **W** starts from the recorded gradients and runs only the parameter branches, one engine
  call per group of frontier nodes that share parameters, accumulating into ``.grad``. Nothing
  on the input path runs twice, so B + W costs about one fused backward.
- **BW** is the ordinary fused backward.

Note "segments": a split stage whose module is an ``nn.Sequential`` runs each child on the
detached output of the previous one, so every child has its own autograd graph and B chains
them. The engine walks the whole graph below a root on every call; without segments each of
W's calls would walk every layer below its frontier node (quadratic in the depth of the
stage), with them it walks only its own block.

The first stage has no input gradient: what B can do there (the gradient through the blocks
above the embedding) it does, and W does the rest. A microbatch's activations are dropped as
soon as its W (or BW) is done.

Where the split is unsafe the stage falls back to BW for B and nothing for W, with a warning
that says why: parameters shared with another stage (``shared_parameters``), or a custom
autograd Function in the graph (its backward would run twice, once in B and once in W, side
effects included).

    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
    >>> st = Stage(net, stage=1, num_stages=3)
    >>> x = torch.randn(2, 4)
    >>> out = st.forward(0, x)
    >>> gx = st.backward_input(0, torch.ones_like(out))
    >>> net[0].weight.grad is None   # B computed no weight gradient
    True
    >>> st.backward_weight(0)
    >>> ref = x.clone().requires_grad_()
    >>> net.zero_grad(); net(ref).sum().backward()
    >>> torch.allclose(gx, ref.grad)
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node

from pipeblocks.errors import PipeblocksError

__all__ = ["Stage", "LossFn", "shared_parameters"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grads = tuple[torch.Tensor | None, ...]


def _engine_backward(
    roots: Sequence[torch.Tensor | GradientEdge],
    grads: Sequence[torch.Tensor | None],
    inputs: Sequence[torch.Tensor],
    accumulate: bool,
) -> tuple[torch.Tensor | None, ...]:
    """One autograd engine call, graph kept. ``accumulate``: into ``.grad`` (else returned).

    It calls the engine directly: the public ``torch.autograd.grad`` wrapper costs about 40 us
    per call in Python, a large share of a small stage's W, which makes one call per frontier
    group.
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
class _Plan:
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


@dataclass(slots=True)
class _Segment:
    """One segment's graph for one microbatch (see the note "segments")."""

    inp: torch.Tensor | None  # the leaf B differentiates to; None if nothing flows below
    root: torch.Tensor | None  # output (or the scaled loss); dropped after B
    params: list[nn.Parameter]
    grad_out: torch.Tensor | None = None  # unlinked segment: what W starts from
    plan: _Plan | None = None
    captured: tuple[torch.Tensor | None, ...] = ()


@dataclass(slots=True)
class _Pending:
    segments: list[_Segment]
    b_done: bool = False


class Stage:
    """Stage ``stage`` of ``num_stages`` wrapping ``module``; ``loss_fn`` serves the last one.

    ``split=False`` makes B the fused backward and W a no-op; ``unsplit_reason`` is logged.
    """

    def __init__(
        self,
        module: nn.Module,
        stage: int,
        num_stages: int,
        loss_fn: LossFn | None = None,
        split: bool = True,
        unsplit_reason: str = "",
    ) -> None:
        self.module = module
        self.stage = stage
        self.num_stages = num_stages
        self.loss_fn = loss_fn
        self.split = split
        self.unsplit_reason = "" if split else unsplit_reason
        if self.unsplit_reason:
            self._warn(self.unsplit_reason)
        self._parts: list[nn.Module] = _segments(module)
        parts = self._parts
        self._part_params = [[p for p in m.parameters() if p.requires_grad] for m in parts]
        self._all_params = [p for p in module.parameters() if p.requires_grad]
        self._pending: dict[int, _Pending] = {}

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    def pending(self) -> int:
        """Microbatches whose activations are held (F done, W or BW not yet)."""
        return len(self._pending)

    # -- passes ------------------------------------------------------------------------------

    def forward(
        self, mb: int, x: torch.Tensor, target: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        """F: the output (detached, to send on) or, on the last stage, the unscaled loss."""
        if mb in self._pending:
            raise PipeblocksError(f"stage {self.stage}: F of microbatch {mb} ran twice")
        if self.is_last and (self.loss_fn is None or target is None):
            raise PipeblocksError(f"stage {self.stage} is the last: it needs loss_fn and targets")
        if self.split:
            parts, params = self._parts, self._part_params
        else:
            parts, params = [self.module], [self._all_params]
        segments = []
        h: torch.Tensor = x
        for k, (part, ps) in enumerate(zip(parts, params, strict=True)):
            inp = None
            if (k > 0 or not self.is_first) and h.is_floating_point() and (k == 0 or h.requires_grad):
                inp = h.detach().requires_grad_(True)
                h = inp
            elif k > 0:
                h = h.detach()
            out = part(h)
            if not isinstance(out, torch.Tensor):
                raise PipeblocksError(
                    f"stage {self.stage} (part {k}, {type(part).__name__}) returned "
                    f"{type(out).__name__}; a pipeline stage maps one tensor to one tensor"
                )
            segments.append(_Segment(inp, out, ps))
            h = out
        result = h.detach()
        if self.is_last:
            assert self.loss_fn is not None and target is not None
            loss = self.loss_fn(h, target)
            # one scaling per microbatch: the sum over microbatches of loss/m is the batch mean
            segments[-1].root = loss * scale
            result = loss.detach()
        self._pending[mb] = _Pending(segments)
        return result

    def backward_input(self, mb: int, grad_out: torch.Tensor | None) -> torch.Tensor | None:
        """B: the gradient w.r.t. the stage input (None on the first stage)."""
        st = self._get(mb, "B")
        if not self.split:
            return self._fused(mb, st, grad_out)
        plans: list[tuple[_Plan, bool] | None] = []
        for seg in st.segments:
            if seg.inp is None:
                plans.append(None)
                continue
            assert seg.root is not None
            plan, custom, linked = _plan(seg.root, seg.inp, {id(p) for p in seg.params})
            if custom:
                self.split = False
                self.unsplit_reason = f"the graph holds a custom autograd Function ({custom})"
                self._warn(self.unsplit_reason)
                return self._fused(mb, st, grad_out)
            plans.append((plan, linked))
        g = grad_out
        for seg, entry in zip(reversed(st.segments), reversed(plans), strict=True):
            if entry is None or not entry[1]:
                # nothing flows to this segment's input: W runs its whole backward
                seg.grad_out = g
                if seg.inp is None:
                    g = None
                    break
                g = torch.zeros_like(seg.inp)
                seg.inp = None
                continue
            assert seg.root is not None and seg.inp is not None
            plan = entry[0]
            out = _engine_backward([seg.root], [g], [seg.inp, *plan.edges], accumulate=False)
            g = out[0] if out[0] is not None else torch.zeros_like(seg.inp)
            # the output side above the frontier is no longer needed
            seg.plan, seg.captured, seg.root, seg.inp = plan, out[1:], None, None
        st.b_done = True
        return None if self.is_first else g

    def backward_weight(self, mb: int) -> None:
        """W: parameter gradients accumulated into ``.grad``; frees the microbatch."""
        st = self._pending.get(mb)
        if st is None and not self.split:
            return  # fused fallback: B did everything
        st = self._get(mb, "W")
        if not st.b_done:
            raise PipeblocksError(f"stage {self.stage}: W of microbatch {mb} before its B")
        del self._pending[mb]
        levels: dict[int, tuple[list[GradientEdge], list[torch.Tensor], dict[int, nn.Parameter]]]
        levels = {}
        for seg in st.segments:
            if seg.root is not None and _can_backward(seg.root, seg.grad_out) and seg.params:
                _engine_backward([seg.root], [seg.grad_out], seg.params, accumulate=True)
            if seg.plan is None:
                continue
            caps = seg.captured
            for level, (idx, ps) in seg.plan.levels.items():
                roots, grads, params = levels.setdefault(level, ([], [], {}))
                for i in idx:
                    if caps[i] is not None:
                        roots.append(seg.plan.edges[i])
                        grads.append(caps[i])
                params.update((id(p), p) for p in ps)
            for nodes, ps in seg.plan.pinned:
                _pinned_weight_grads(nodes, ps, seg.plan.edges, caps)
        for _, (roots, grads, params) in sorted(levels.items()):
            if roots:
                _engine_backward(roots, grads, list(params.values()), accumulate=True)

    def backward(self, mb: int, grad_out: torch.Tensor | None) -> torch.Tensor | None:
        """BW: the fused backward; returns the input gradient, accumulates weights."""
        return self._fused(mb, self._get(mb, "BW"), grad_out)

    # -- helpers -----------------------------------------------------------------------------

    def _fused(self, mb: int, st: _Pending, grad_out: torch.Tensor | None) -> torch.Tensor | None:
        del self._pending[mb]
        g = grad_out
        for seg in reversed(st.segments):
            assert seg.root is not None
            inputs = seg.params + ([seg.inp] if seg.inp is not None else [])
            if inputs and _can_backward(seg.root, g):
                _engine_backward([seg.root], [g], inputs, accumulate=True)
            if seg.inp is None:
                g = None
                break
            g = seg.inp.grad if seg.inp.grad is not None else torch.zeros_like(seg.inp)
        return None if self.is_first else g

    def _get(self, mb: int, what: str) -> _Pending:
        st = self._pending.get(mb)
        if st is None:
            raise PipeblocksError(
                f"stage {self.stage}: {what} of microbatch {mb} has no activation (F not run, "
                f"or its W/BW already ran)"
            )
        if what in ("B", "BW") and st.b_done:
            raise PipeblocksError(f"stage {self.stage}: {what} of microbatch {mb} ran twice")
        return st

    def _warn(self, reason: str) -> None:
        log.warning("stage %d: B/W split off, B runs the fused backward and W nothing: %s",
                    self.stage, reason)


def _segments(module: nn.Module) -> list[nn.Module]:
    """The children of a plain ``nn.Sequential`` (see the note "segments"), else the module.

    Only when running the children one by one is exactly what the module's forward does: the
    stock ``Sequential.forward`` and no hooks on the container itself.
    """
    plain = (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and len(module) > 1
        and not (module._forward_hooks or module._forward_pre_hooks)
    )
    return list(module) if plain else [module]


def _can_backward(root: torch.Tensor, grad: torch.Tensor | None) -> bool:
    """A root with a graph and a gradient to start from (a scalar loss needs none)."""
    return root.requires_grad and (grad is not None or root.numel() == 1)


_ACC_TYPE = type(torch.zeros((), requires_grad=True).view(()).grad_fn.next_functions[0][0])


def _plan(root: torch.Tensor, inp: torch.Tensor, param_ids: set[int]) -> tuple[_Plan, str, bool]:
    """Find the frontier between the input path and the parameter branches of one graph.

    One post-order pass from ``root``: a node is *on the path* when it leads to ``inp``; a
    node off the path *reaches* the parameters below it. A node on the path with a child off
    the path that reaches parameters is a frontier node; its *level* is the largest number of
    frontier nodes below it on the path, so a frontier node never sits on the input path of
    another one of its level. Frontier nodes whose parameter sets overlap merge into one
    group. Returns the plan, the name of a custom autograd Function in the graph (or ""), and
    whether the root is on the path at all.
    """
    plan = _Plan([], {}, [])
    top = root.grad_fn
    if top is None:
        return plan, "", False
    on: dict[Node, bool] = {}
    reach: dict[Node, frozenset[int]] = {}
    level: dict[Node, int] = {}
    front: dict[Node, frozenset[int]] = {}
    kids: dict[Node, list[Node]] = {}
    params: dict[int, nn.Parameter] = {}
    custom = ""
    empty: frozenset[int] = frozenset()
    cfn = torch.autograd.function.BackwardCFunction
    stack = [top]
    while stack:
        node = stack[-1]
        if node in on:
            stack.pop()
            continue
        children = kids.get(node)
        if children is None:
            if type(node) is _ACC_TYPE:
                stack.pop()
                var = node.variable  # type: ignore[attr-defined]
                on[node] = var is inp
                level[node] = 0
                if id(var) in param_ids:
                    params[id(var)] = var
                    reach[node] = frozenset((id(var),))
                else:
                    reach[node] = empty
                continue
            if isinstance(node, cfn):
                custom = custom or type(node).__name__
            children = [c for c, _ in node.next_functions if c is not None]
            kids[node] = children
            stack.extend(c for c in children if c not in on)
            continue
        stack.pop()
        path, lv, ps = False, 0, empty
        for c in children:
            if on[c]:
                path = True
                lv = max(lv, level[c] + (c in front))
            elif reach[c]:
                ps = ps | reach[c]
        on[node] = path
        if path:
            level[node] = lv
            reach[node] = empty
            if ps:
                front[node] = ps
        else:
            reach[node] = ps
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
            first = len(plan.edges)
            plan.edges.extend(GradientEdge(node, i) for i in range(len(node._input_metadata)))  # type: ignore[attr-defined]
            slots.append((node, list(range(first, len(plan.edges)))))
        ps_list = [params[p] for p in sorted(pids)]
        if len(nodes) == 1:
            idx, lps = plan.levels.setdefault(level[nodes[0]], ([], []))
            idx.extend(slots[0][1])
            lps.extend(ps_list)
        else:
            plan.pinned.append((slots, ps_list))
    return plan, custom, on[top]


def _pinned_weight_grads(
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
        _engine_backward(roots, grads, params, accumulate=True)
    finally:
        for h in handles:
            h.remove()


def shared_parameters(modules: Mapping[int, nn.Module]) -> dict[int, str]:
    """Stages whose parameters also belong to another stage: stage -> why (for the warning)."""
    seen: dict[int, tuple[int, str]] = {}
    why: dict[int, str] = {}
    for stage, mod in sorted(modules.items()):
        for name, p in mod.named_parameters(remove_duplicate=False):
            first = seen.setdefault(id(p), (stage, name))
            if first[0] != stage:
                msg = (f"parameter '{name}' is shared with stage {first[0]} ('{first[1]}'); "
                       f"tied weights across stages")
                why.setdefault(stage, msg)
                why.setdefault(first[0], msg)
    return why
