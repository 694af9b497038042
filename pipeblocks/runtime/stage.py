"""One pipeline stage with per-microbatch F, B, W and BW passes (the B/W split).

- **F** runs the module; a stage that is not the first makes its input require grad. The last
  stage applies the loss and keeps ``loss * scale`` as the root of its backward.
- **B** is the gradient w.r.t. the stage's input only: the autograd engine then skips every
  weight-gradient kernel (a linear layer computes ``grad_input``, not ``grad_weight``). On the
  way it captures the gradient arriving at each *frontier* node, found by one
  :class:`~pipeblocks.runtime.frontier.Planner` per segment (each graph shape is analysed
  once: the note "plan cache" of :mod:`pipeblocks.runtime.frontier`).
- **W** runs only the parameter branches from the captured gradients, accumulating into
  ``.grad``: a linear layer's or layer norm's weight gradient straight from the saved tensors,
  any other branch through the engine. Nothing on the input path runs twice.
- **BW** is the ordinary fused backward.

Note "segments": a split stage whose module is an ``nn.Sequential`` runs each child on the
detached output of the previous one, so every child has its own autograd graph and B chains
them. The engine walks the whole graph below a root on every call; without segments each of
W's calls would walk every layer below its frontier node (quadratic in the depth of the
stage), with them it walks only its own block.

Note "cost": B + W takes more CPU than BW by about a fixed amount per block, not per FLOP, so
the ratio falls as blocks grow (benchmarks/bench_split.py measures it). B walks each graph
once in Python to find the frontier (about 50 us per transformer block: the largest share at
small sizes) and makes one engine call per segment; W's kernels run apart from B's, on
operands that have left the cache; and the frontier nodes W cannot compute itself
(:mod:`pipeblocks.runtime.direct`) cost one engine call per frontier level, each with its own
set-up and walk of the graph below its frontier nodes.

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

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeblocks.errors import PipeblocksError
from pipeblocks.runtime.checkpointing import checkpointed
from pipeblocks.runtime.frontier import Plan, Planner, WeightPass, engine_backward
from pipeblocks.runtime.tree import call, flatten, unfilled, unflatten, wanted_side

__all__ = ["Stage", "LossFn", "shared_parameters"]

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], Any]  # (output, target) -> loss, or (sum, count)


class SideInputError(PipeblocksError, KeyError):
    """A stage asks for a side input that the batch does not give."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(slots=True)
class _Segment:
    """One segment's graph for one microbatch (see the note "segments")."""

    ins: list[torch.Tensor]  # the leaves B differentiates to (the inputs that need a gradient)
    roots: list[torch.Tensor]  # outputs that need a gradient (or the scaled loss); dropped by B
    w_roots: list[torch.Tensor] = field(default_factory=list)  # what W starts from itself:
    w_grads: list[torch.Tensor | None] = field(default_factory=list)  # unlinked or loose roots
    plan: Plan | None = None
    captured: tuple[torch.Tensor | None, ...] = ()


@dataclass(slots=True)
class _Pending:
    segments: list[_Segment]
    b_done: bool = False
    bare: bool = True  # the stage input was one tensor: B returns a tensor, not a list


Grad = torch.Tensor | Sequence[torch.Tensor | None] | None


class Stage:
    """Stage ``stage`` of ``num_stages`` wrapping ``module``; ``loss_fn`` serves the last one.

    ``split=False`` makes B the fused backward and W a no-op; ``unsplit_reason`` is logged.

    The input may be a tensor or a tuple, list or dict of tensors (:mod:`pipeblocks.runtime.
    tree`); a floating leaf that requires grad (or a bare floating tensor, on any stage but
    the first) gets a gradient. B takes the gradients of the outputs that require grad, in
    order (a tensor for one), and returns those of the inputs (a tensor for a bare input).

    ``direct``: W computes plain linear and layer-norm weight gradients itself
    (:mod:`pipeblocks.runtime.direct`). It sees the hooks registered on a parameter tensor,
    not those registered on its ``AccumulateGrad`` node (from C++, or ``Node.register_hook``),
    so pass ``direct=False`` when something relies on those; it is off by itself when the
    module holds a ``DistributedDataParallel`` (whose reducer hooks that node).
    """

    def __init__(
        self,
        module: nn.Module,
        stage: int,
        num_stages: int,
        loss_fn: LossFn | None = None,
        split: bool = True,
        unsplit_reason: str = "",
        direct: bool = True,
        autocast: tuple[str, torch.dtype] | None = None,
        checkpoint: Callable[[nn.Module], bool] | None = None,
    ) -> None:
        self.module = module
        self.autocast = autocast
        self.checkpoint = checkpoint
        self.stage = stage
        self.num_stages = num_stages
        self.loss_fn = loss_fn
        self.split = split
        self.unsplit_reason = "" if split else unsplit_reason
        if self.unsplit_reason:
            self._warn(self.unsplit_reason)
        self._parts: list[nn.Module] = _segments(module)
        # every segment looks for all of the stage's parameters: a child may use another's
        self._params = [p for p in module.parameters() if p.requires_grad]
        param_ids = {id(p) for p in self._params}
        self.direct = direct and not any(
            isinstance(m, nn.parallel.DistributedDataParallel) for m in module.modules())
        self._planners = [Planner(param_ids, direct=self.direct) for _ in self._parts]
        self._weight_pass = WeightPass()
        self._pending: dict[int, _Pending] = {}
        self._side: dict[tuple[int, tuple[str, ...]], tuple[str, ...]] = {}
        self._checked: set[tuple[int, int]] = set()
        self.last_count: int | None = None  # the token count of the last loss (sum, count)

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    def pending(self) -> int:
        """Microbatches whose activations are held (F done, W or BW not yet)."""
        return len(self._pending)

    def side_inputs(self, available: Sequence[str]) -> set[str]:
        """The side inputs among ``available`` that some part of this stage asks for."""
        return {n for k, part in enumerate(self._parts) for n in self._wanted(k, part, available)}

    def probe(self, x: Any, side: Mapping[str, Any] | None = None) -> Any:
        """The output for input ``x`` with nothing kept (the shape handshake): detached
        leaves, each requiring grad where the real output will."""
        with torch.enable_grad():
            out = self._run(self._entry(x, side), side or {}, [])
        return _detached(out)

    def evaluate(self, x: Any, target: Any = None, side: Mapping[str, Any] | None = None) -> Any:
        """A forward with nothing kept (call it under ``torch.no_grad()``): the output, or on
        the last stage the loss (or ``(sum, count)``)."""
        out = self._run(x, side or {}, [])
        if not self.is_last:
            return _detached(out)
        assert self.loss_fn is not None
        with self._autocast():
            loss = self.loss_fn(out, target)
        return (loss[0].detach(), int(loss[1])) if isinstance(loss, tuple) else loss.detach()

    # -- passes ------------------------------------------------------------------------------

    def forward(
        self, mb: int, x: Any, target: Any = None, scale: float = 1.0,
        side: Mapping[str, Any] | None = None,
    ) -> Any:
        """F: the output (detached leaves, to send on) or, on the last stage, the unscaled
        loss (a ``(sum, count)`` loss keeps its count in ``last_count``)."""
        if mb in self._pending:
            raise PipeblocksError(f"stage {self.stage}: F of microbatch {mb} ran twice")
        if self.is_last and (self.loss_fn is None or target is None):
            raise PipeblocksError(f"stage {self.stage} is the last: it needs loss_fn and targets")
        segments: list[_Segment] = []
        h = self._run(self._entry(x, side), side or {}, segments)
        result = _detached(h)
        if self.is_last:
            assert self.loss_fn is not None
            with self._autocast():
                loss = self.loss_fn(h, target)
            self.last_count = None
            if isinstance(loss, tuple):  # (sum, count): the caller's scale is 1 / total count
                loss, count = loss
                self.last_count = int(count)
            # one scaling per microbatch: the sum over microbatches of loss/m is the batch mean
            segments[-1].roots = [loss * scale]
            result = loss.detach()
        self._pending[mb] = _Pending(segments, bare=isinstance(x, torch.Tensor))
        return result

    def backward_input(self, mb: int, grad_out: Grad) -> Any:
        """B: the gradient w.r.t. the stage input (None on the first stage)."""
        st = self._get(mb, "B")
        if not self.split:
            return self._fused(mb, st, grad_out)
        plans: list[Plan | None] = []
        for seg, planner in zip(st.segments, self._planners, strict=True):
            if not seg.ins or not seg.roots:
                plans.append(None)
                continue
            found = planner.plan(seg.roots, seg.ins)
            if found.shape.custom:
                self.split = False
                self.unsplit_reason = (
                    f"the graph holds a custom autograd Function ({found.shape.custom})"
                )
                self._warn(self.unsplit_reason)
                return self._fused(mb, st, grad_out)
            plans.append(found)
        g = _grads(grad_out, self.is_last)
        for seg, plan in zip(reversed(st.segments), reversed(plans), strict=True):
            every, g_out = seg.roots, g
            roots, grads = _pairs(every, g)
            ins, seg.roots, seg.ins = seg.ins, [], []
            if plan is None or not plan.shape.linked:
                # nothing flows to this segment's inputs: W runs its whole backward
                seg.w_roots, seg.w_grads = roots, grads
                g = [torch.zeros_like(i) for i in ins]
                continue
            out = engine_backward(roots, grads, [*ins, *plan.edges], accumulate=False)
            g = [o if o is not None else torch.zeros_like(i) for o, i in zip(out[: len(ins)], ins, strict=True)]
            # roots that reach parameters but no input: W starts from them itself
            seg.w_roots, seg.w_grads = _pairs([every[k] for k in plan.shape.loose],
                                              [g_out[k] for k in plan.shape.loose])
            # the output side above the frontier is no longer needed
            seg.plan, seg.captured = plan, out[len(ins):]
        st.b_done = True
        return self._input_grad(st, g)

    def backward_weight(self, mb: int) -> None:
        """W: parameter gradients accumulated into ``.grad``; frees the microbatch."""
        st = self._pending.get(mb)
        if st is None and not self.split:
            return  # fused fallback: B did everything
        st = self._get(mb, "W")
        if not st.b_done:
            raise PipeblocksError(f"stage {self.stage}: W of microbatch {mb} before its B")
        del self._pending[mb]
        for seg in st.segments:
            if seg.w_roots and self._params:
                engine_backward(seg.w_roots, seg.w_grads, self._params, accumulate=True)
        planned = [seg for seg in st.segments if seg.plan is not None]
        self._weight_pass([seg.plan for seg in planned], [seg.captured for seg in planned])  # type: ignore[misc]

    def backward(self, mb: int, grad_out: Grad) -> Any:
        """BW: the fused backward; returns the input gradient, accumulates weights."""
        return self._fused(mb, self._get(mb, "BW"), grad_out)

    # -- helpers -----------------------------------------------------------------------------

    def _entry(self, x: Any, side: Mapping[str, Any] | None) -> Any:
        """The stage input as the first part sees it: leaves that need a gradient are made
        fresh leaves requiring grad (a bare floating tensor always, off the first stage)."""
        if isinstance(x, torch.Tensor):
            if not self.is_first and x.is_floating_point():
                return x.detach().requires_grad_(True)
            return x.detach()
        leaves, spec = flatten(x, f"stage {self.stage}'s input")
        return unflatten(spec, [_fresh(t) for t in leaves])

    def _run(self, x: Any, side: Mapping[str, Any], segments: list[_Segment]) -> Any:
        """Run the parts in order; when split, each on fresh leaves (its own segment)."""
        h = x
        ins = [t for t in flatten(h)[0] if t.requires_grad and t.grad_fn is None]
        for k, part in enumerate(self._parts):
            if k > 0 and self.split:
                segments.append(_Segment(ins, _roots(h)))
                leaves, spec = flatten(h)
                h = unflatten(spec, [_fresh(t) for t in leaves])
                ins = [t for t in flatten(h)[0] if t.requires_grad]
            names = self._wanted(k, part, list(side))
            if (k, len(side)) not in self._checked:
                self._checked.add((k, len(side)))
                self._refuse_missing(part, unfilled(part, h, names), side)
            h = self._call(part, h, side, names)
            flatten(h, f"stage {self.stage} (part {k}, {type(part).__name__})'s output")
        segments.append(_Segment(ins, _roots(h)))
        return h

    def _call(self, part: nn.Module, h: Any, side: Mapping[str, Any], names: Sequence[str]
              ) -> Any:
        """One part under the stage's autocast; checkpointed (:mod:`pipeblocks.runtime.
        checkpointing`) when chosen and gradients are on."""
        def run(part: nn.Module = part, h: Any = h) -> Any:
            return call(part, h, side, names)

        with self._autocast():
            if self.checkpoint is not None and torch.is_grad_enabled() and self.checkpoint(part):
                return checkpointed(run, self.autocast)
            return run()

    def _autocast(self) -> Any:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.autocast[0], dtype=self.autocast[1])

    def _wanted(self, k: int, part: nn.Module, available: Sequence[str]) -> tuple[str, ...]:
        key = (k, tuple(available))
        got = self._side.get(key)
        if got is None:
            got = self._side[key] = wanted_side(part, available)
            self._refuse_missing(part, [n for n in got if n not in available], available)
        return got

    def _refuse_missing(self, part: nn.Module, missing: Sequence[str],
                        available: Iterable[str]) -> None:
        if missing:
            raise SideInputError(
                f"stage {self.stage} ({type(part).__name__}) asks for side input(s) "
                f"{list(missing)} but the batch gives only {sorted(available)}; pass them in "
                f"step(..., side={{name: tensor}}) or give them defaults")

    def _input_grad(self, st: _Pending, g: list[torch.Tensor]) -> Any:
        if self.is_first:
            return None
        return g[0] if st.bare and len(g) == 1 else g

    def _fused(self, mb: int, st: _Pending, grad_out: Grad) -> Any:
        del self._pending[mb]
        g = _grads(grad_out, self.is_last)
        for seg in reversed(st.segments):
            roots, grads = _pairs(seg.roots, g)
            inputs = self._params + seg.ins
            if inputs and roots:
                engine_backward(roots, grads, inputs, accumulate=True)
            g = [i.grad if i.grad is not None else torch.zeros_like(i) for i in seg.ins]
        return self._input_grad(st, g)

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
        and len(module) >= 1
        and not (module._forward_hooks or module._forward_pre_hooks)
    )
    return list(module) if plain else [module]  # type: ignore[call-overload]


def _can_backward(root: torch.Tensor, grad: torch.Tensor | None) -> bool:
    """A root with a graph and a gradient to start from (a scalar loss needs none)."""
    return root.requires_grad and (grad is not None or root.numel() == 1)


def _grads(grad_out: Grad, last: bool) -> list[torch.Tensor | None]:
    if last or grad_out is None:
        return [None]
    return [grad_out] if isinstance(grad_out, torch.Tensor) else list(grad_out)


def _pairs(roots: list[torch.Tensor], grads: Sequence[torch.Tensor | None]
           ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The roots B or BW starts from, with their gradients (a root without one is skipped)."""
    if len(grads) != len(roots):
        raise PipeblocksError(f"{len(grads)} output gradient(s) for {len(roots)} output(s) "
                              f"that require grad")
    keep = [(r, g) for r, g in zip(roots, grads, strict=True) if _can_backward(r, g)]
    return [r for r, _ in keep], [g for _, g in keep]


def _roots(out: Any) -> list[torch.Tensor]:
    return [t for t in flatten(out)[0] if t.requires_grad]


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A leaf for the next part: a floating tensor that requires grad stays differentiable."""
    if t.is_floating_point() and t.requires_grad:
        return t.detach().requires_grad_(True)
    return t.detach()


def _detached(out: Any) -> Any:
    """``out`` with every leaf detached, floating ones requiring grad as they did."""
    if isinstance(out, torch.Tensor):
        return out.detach().requires_grad_(out.requires_grad)
    leaves, spec = flatten(out)
    return unflatten(spec, [t.detach().requires_grad_(t.requires_grad) for t in leaves])


def shared_parameters(modules: Mapping[int, nn.Module]) -> dict[int, str]:
    """Stages whose parameters also belong to another stage: stage -> why (for the warning)."""
    holders: dict[int, list[tuple[int, str]]] = {}
    for stage, mod in sorted(modules.items()):
        for name, p in mod.named_parameters():
            holders.setdefault(id(p), []).append((stage, name))
    why: dict[int, str] = {}
    for where in holders.values():
        for stage, name in where:
            others = [f"stage {s} ('{n}')" for s, n in where if s != stage]
            if others:
                why.setdefault(stage, f"parameter '{name}' is shared with {', '.join(others)}; "
                                      f"tied weights across stages")
    return why
