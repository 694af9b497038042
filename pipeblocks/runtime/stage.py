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

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pipeblocks.errors import PipeblocksError
from pipeblocks.runtime.frontier import Plan, Planner, WeightPass, engine_backward

__all__ = ["Stage", "LossFn", "shared_parameters"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(slots=True)
class _Segment:
    """One segment's graph for one microbatch (see the note "segments")."""

    inp: torch.Tensor | None  # the leaf B differentiates to; None if nothing flows below
    root: torch.Tensor | None  # output (or the scaled loss); dropped after B
    grad_out: torch.Tensor | None = None  # unlinked segment: what W starts from
    plan: Plan | None = None
    captured: tuple[torch.Tensor | None, ...] = ()


@dataclass(slots=True)
class _Pending:
    segments: list[_Segment]
    b_done: bool = False


class Stage:
    """Stage ``stage`` of ``num_stages`` wrapping ``module``; ``loss_fn`` serves the last one.

    ``split=False`` makes B the fused backward and W a no-op; ``unsplit_reason`` is logged.

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
        # every segment looks for all of the stage's parameters: a child may use another's
        self._params = [p for p in module.parameters() if p.requires_grad]
        param_ids = {id(p) for p in self._params}
        self.direct = direct and not any(
            isinstance(m, nn.parallel.DistributedDataParallel) for m in module.modules())
        self._planners = [Planner(param_ids, direct=self.direct) for _ in self._parts]
        self._weight_pass = WeightPass()
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
        parts = self._parts if self.split else [self.module]
        segments = []
        h: torch.Tensor = x
        for k, part in enumerate(parts):
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
            segments.append(_Segment(inp, out))
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
        plans: list[Plan | None] = []
        for seg, planner in zip(st.segments, self._planners, strict=True):
            if seg.inp is None:
                plans.append(None)
                continue
            assert seg.root is not None
            found = planner.plan(seg.root, seg.inp)
            if found.shape.custom:
                self.split = False
                self.unsplit_reason = (
                    f"the graph holds a custom autograd Function ({found.shape.custom})"
                )
                self._warn(self.unsplit_reason)
                return self._fused(mb, st, grad_out)
            plans.append(found)
        g = grad_out
        for seg, plan in zip(reversed(st.segments), reversed(plans), strict=True):
            if plan is None or not plan.shape.linked:
                # nothing flows to this segment's input: W runs its whole backward
                seg.grad_out = g
                if seg.inp is None:
                    g = None
                    break
                g = torch.zeros_like(seg.inp)
                seg.inp = None
                continue
            assert seg.root is not None and seg.inp is not None
            out = engine_backward([seg.root], [g], [seg.inp, *plan.edges], accumulate=False)
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
        for seg in st.segments:
            if seg.root is not None and _can_backward(seg.root, seg.grad_out) and self._params:
                engine_backward([seg.root], [seg.grad_out], self._params, accumulate=True)
        planned = [seg for seg in st.segments if seg.plan is not None]
        self._weight_pass([seg.plan for seg in planned], [seg.captured for seg in planned])  # type: ignore[misc]

    def backward(self, mb: int, grad_out: torch.Tensor | None) -> torch.Tensor | None:
        """BW: the fused backward; returns the input gradient, accumulates weights."""
        return self._fused(mb, self._get(mb, "BW"), grad_out)

    # -- helpers -----------------------------------------------------------------------------

    def _fused(self, mb: int, st: _Pending, grad_out: torch.Tensor | None) -> torch.Tensor | None:
        del self._pending[mb]
        g = grad_out
        for seg in reversed(st.segments):
            assert seg.root is not None
            inputs = self._params + ([seg.inp] if seg.inp is not None else [])
            if inputs and _can_backward(seg.root, g):
                engine_backward([seg.root], [g], inputs, accumulate=True)
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
    return list(module) if plain else [module]  # type: ignore[call-overload]


def _can_backward(root: torch.Tensor, grad: torch.Tensor | None) -> bool:
    """A root with a graph and a gradient to start from (a scalar loss needs none)."""
    return root.requires_grad and (grad is not None or root.numel() == 1)


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
