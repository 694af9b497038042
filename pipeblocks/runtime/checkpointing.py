"""Activation checkpointing that composes with the B/W split: the recompute runs once.

``torch.utils.checkpoint`` (non-reentrant) recomputes a region when backward first needs one
of its saved tensors, and keeps the recomputed tensors for that backward call only. Under the
B/W split a microbatch's backward is several engine calls (B, then W's), so each would
recompute again, and W's own kernels (:mod:`pipeblocks.runtime.direct`) read saved tensors too.
Here the recomputed tensors are kept for the microbatch instead: F saves a handle per tensor
(nothing else of the region), the first unpack (in B, or in BW) runs the region's forward again
with the same inputs, RNG state and autocast, and every later unpack (in B or W) reads the
kept tensor. They are freed with the microbatch's graph, after its W.

    >>> import torch
    >>> lin = torch.nn.Linear(3, 3)
    >>> x = torch.randn(2, 3, requires_grad=True)
    >>> y = checkpointed(lambda: torch.tanh(lin(x)))
    >>> y.sum().backward()
    >>> ref = x.detach().requires_grad_()
    >>> torch.autograd.grad(torch.tanh(lin(ref)).sum(), ref)[0].allclose(x.grad)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipeblocks.errors import PipeblocksError

__all__ = ["checkpointed"]


class _Frame:
    """One region's forward for one microbatch: how to run it again, and what it saved."""

    def __init__(self, run: Callable[[], Any], autocast: tuple[str, torch.dtype] | None) -> None:
        self.run = run
        self.autocast = autocast
        self.rng = torch.get_rng_state()
        self.count = 0  # tensors saved in F
        self.saved: list[torch.Tensor] | None = None

    def pack(self, t: torch.Tensor) -> tuple[_Frame, int]:
        self.count += 1
        return self, self.count - 1

    def recompute(self) -> list[torch.Tensor]:
        got: list[torch.Tensor] = []

        def keep(t: torch.Tensor) -> int:
            got.append(t)
            return 0

        with torch.random.fork_rng(devices=[]), torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(keep, lambda _: None):
            torch.set_rng_state(self.rng)
            if self.autocast is not None:
                with torch.autocast(self.autocast[0], dtype=self.autocast[1]):
                    self.run()
            else:
                self.run()
        if len(got) != self.count:
            raise PipeblocksError(
                f"a checkpointed layer saved {self.count} tensors in its forward but "
                f"{len(got)} when run again; its forward must do the same work every time "
                f"(no data-dependent branches), or do not checkpoint it")
        return got


def _unpack(handle: tuple[_Frame, int]) -> torch.Tensor:
    frame, i = handle
    if frame.saved is None:
        frame.saved = frame.recompute()
    return frame.saved[i]


def checkpointed(run: Callable[[], Any],
                 autocast: tuple[str, torch.dtype] | None = None) -> Any:
    """``run()`` with its saved tensors replaced by handles, recomputed once when needed.

    ``autocast``: the (device type, dtype) the forward runs under, for the recompute.
    """
    frame = _Frame(run, autocast)
    with torch.autograd.graph.saved_tensors_hooks(frame.pack, _unpack):
        return run()
