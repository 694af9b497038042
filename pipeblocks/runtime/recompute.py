"""Recomputation in the runtime: a stage that keeps only its input between F and B.

For a stage in ``schedule.recompute`` (:mod:`pipeblocks.ir.recompute`) the executor builds a
:class:`RecomputeStage`. Its F runs the module under ``torch.no_grad()`` (no activation is
saved) and keeps the input, the target, the loss scale, the side inputs and the random state.
Its B (or BW) first re-runs the ordinary F from that input with the saved random state, so
dropout draws the same masks, then runs the ordinary B: the forward is recomputed once, in B,
and W uses the graph B built (the B/W split stays on).

    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
    >>> st = RecomputeStage(net, stage=1, num_stages=3)
    >>> x = torch.randn(2, 4)
    >>> out = st.forward(0, x)
    >>> out.requires_grad, st.held_inputs()      # nothing saved but the input
    (True, 1)
    >>> gx = st.backward_input(0, torch.ones_like(out))
    >>> st.backward_weight(0)
    >>> ref = x.clone().requires_grad_()
    >>> g = [p.grad.clone() for p in net.parameters()]
    >>> net.zero_grad(); net(ref).sum().backward()
    >>> torch.allclose(gx, ref.grad) and all(torch.allclose(a, p.grad) for a, p in
    ...                                       zip(g, net.parameters()))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pipeblocks.errors import PipeblocksError
from pipeblocks.ir.schedule import Schedule
from pipeblocks.runtime.stage import Grad, Stage
from pipeblocks.runtime.steps import _saved_bytes, _StepState
from pipeblocks.runtime.tree import flatten, unflatten

__all__ = ["RecomputeStage", "stage_class", "kept_bytes", "rebuilt"]


@dataclass(slots=True)
class _Kept:
    """What F keeps for the recompute in B."""

    x: Any
    target: Any
    scale: float
    side: Mapping[str, Any] | None
    rng: torch.Tensor


class RecomputeStage(Stage):
    """A :class:`Stage` whose F keeps only its input; B re-runs F first (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: dict[int, _Kept] = {}

    def held_inputs(self) -> int:
        """Microbatches whose input is kept for a recompute."""
        return len(self._kept)

    def pending(self) -> int:
        return super().pending() + len(self._kept)

    def forward(
        self, mb: int, x: Any, target: Any = None, scale: float = 1.0,
        side: Mapping[str, Any] | None = None,
    ) -> Any:
        """F without saving: the output (leaves needing a gradient where floating) or, on the
        last stage, the unscaled loss."""
        if mb in self._kept or mb in self._pending:
            raise PipeblocksError(f"stage {self.stage}: F of microbatch {mb} ran twice")
        if self.is_last and (self.loss_fn is None or target is None):
            raise PipeblocksError(f"stage {self.stage} is the last: it needs loss_fn and targets")
        rng = torch.get_rng_state()
        with torch.no_grad():
            out = self.evaluate(x, target, side)
        self._kept[mb] = _Kept(x, target, scale, side, rng)
        if self.is_last:
            self.last_count = None
            if isinstance(out, tuple):  # (sum, count)
                out, count = out
                self.last_count = int(count)
            return out
        return _needing_grad(out)

    def backward_input(self, mb: int, grad_out: Grad) -> Any:
        self._rebuild(mb, "B")
        return super().backward_input(mb, grad_out)

    def backward(self, mb: int, grad_out: Grad) -> Any:
        self._rebuild(mb, "BW")
        return super().backward(mb, grad_out)

    def _rebuild(self, mb: int, what: str) -> None:
        """The recompute: the ordinary F from the kept input, with F's random state."""
        kept = self._kept.pop(mb, None)
        if kept is None:
            raise PipeblocksError(f"stage {self.stage}: {what} of microbatch {mb} has no kept "
                                  f"input (F not run, or its {what} already ran)")
        count = self.last_count
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(kept.rng)
            super().forward(mb, kept.x, kept.target, kept.scale, kept.side)
        self.last_count = count  # the count belongs to the latest F, not to this recompute


def _needing_grad(out: Any) -> Any:
    """``out`` (computed without a graph) as the leaves the real F sends: floating ones
    require grad (they depend on the stage's parameters)."""
    if isinstance(out, torch.Tensor):
        return out.detach().requires_grad_(out.is_floating_point())
    leaves, spec = flatten(out)
    return unflatten(spec, [t.detach().requires_grad_(t.is_floating_point()) for t in leaves])


def stage_class(schedule: Schedule, stage: int) -> type[Stage]:
    """The runner class the executor builds for ``stage`` of ``schedule`` (offload:
    :mod:`pipeblocks.runtime.offload`)."""
    from pipeblocks.runtime.offload import offload_class

    return RecomputeStage if stage in schedule.recompute else (
        offload_class(schedule, stage) or Stage)


def _storages(x: Any) -> dict[int, int]:
    """Storage pointer -> bytes of every tensor leaf of ``x`` (each storage once)."""
    leaves = [x] if isinstance(x, torch.Tensor) else flatten(x)[0]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in leaves}


def kept_bytes(runner: object, mb: int) -> int:
    """What a :class:`RecomputeStage` keeps for microbatch ``mb`` between F and B, in bytes
    (the input's storages); 0 for any other runner. The executor's ``measure_memory`` counts
    it as F's hold, as the simulator counts ``mem_in`` (:mod:`pipeblocks.sim.recompute`)."""
    kept = runner._kept.get(mb) if isinstance(runner, RecomputeStage) else None
    return sum(_storages(kept.x).values()) if kept is not None else 0


@contextlib.contextmanager
def rebuilt(st: _StepState, key: tuple[int, int], runner: object,
            skip: set[int] | None) -> Iterator[None]:
    """Around a B or BW: with ``skip`` (the parameters' storages; None when memory is not
    measured), count what a recompute saves (the rebuilt activations, the kept input aside)
    into the step's live bytes and peak, held until that microbatch's W or BW frees it. Other
    runners save nothing in B, so their accounting is unchanged."""
    kept = runner._kept.get(key[1]) if isinstance(runner, RecomputeStage) else None
    if skip is None or kept is None:
        yield
        return
    with _saved_bytes(skip | set(_storages(kept.x))) as counter:
        yield
    st.held[key] = st.held.get(key, 0) + counter[0]
    st.live += counter[0]
    st.peak = max(st.peak, st.live)
