"""FSDP2 emulated (``--emulate-ms`` with ``--dp-mode fsdp``): the ops and passes take what the
simulator (:func:`pipeblocks.sim.fsdp.simulate_fsdp`) says, so measured / simulated checks it.

:class:`EmulatedFSDP` runs the lowered FSDP program's ops on one communication stream per rank:
``unshard(s)`` all-gathers (asynchronously: the stage's next pass waits for it),
``reduce_grad(s)`` reduce-scatters, ``reshard(s)`` frees. :class:`EmulatedFSDPStage` is an
emulated stage that behaves as FSDP2 makes a real one: it runs the fused backward in B (W takes
no time: docs/hybrid.md), a pass waits for its stage's pending all-gather, a pass of a
resharded stage first all-gathers (blocking), and the stage reshards after every backward and,
with reshard-after-forward, after every forward. Collective times come from the ring model over
the emulated links (:func:`pipeblocks.runtime.hybrid.emulated_network`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pipeblocks.ir.hybrid import Collective, CollectiveKind
from pipeblocks.ir.schedule import Schedule
from pipeblocks.runtime.emulate import EmulatedStage, emulated_sleep
from pipeblocks.runtime.hybrid import emulated_network, grad_bytes
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.fsdp import simulate_fsdp

__all__ = ["EmulatedFSDP", "EmulatedFSDPStage", "emulated_fsdp", "simulated_fsdp_ms"]


class EmulatedFSDP:
    """The FSDP ops of one rank, timed: ``gather[s]`` and ``scatter[s]`` seconds per stage."""

    mode = "fsdp"

    def __init__(self, gather: Mapping[int, float], scatter: Mapping[int, float],
                 reshard_after_forward: bool = True) -> None:
        self.gather, self.scatter, self.raf = dict(gather), dict(scatter), reshard_after_forward
        self._free = 0.0
        self._pending: dict[int, float] = {}
        self._gathered: set[int] = set()

    def run(self, op: Collective) -> None:
        now, s = time.perf_counter(), op.stage
        if op.kind is CollectiveKind.UNSHARD:
            self._free = self._pending[s] = max(now, self._free) + self.gather.get(s, 0.0)
            self._gathered.add(s)
        elif op.kind is CollectiveKind.REDUCE_GRAD:
            self._free = max(now, self._free) + self.scatter.get(s, 0.0)
        else:
            self._gathered.discard(s)

    def before(self, stage: int) -> None:
        """Before a pass: wait for the stage's all-gather, or all-gather it now."""
        if stage in self._pending:
            emulated_sleep(max(0.0, self._pending.pop(stage) - time.perf_counter()))
        if stage not in self._gathered:
            emulated_sleep(self.gather.get(stage, 0.0))
            self._gathered.add(stage)

    def after(self, stage: int, forward: bool) -> None:
        if not forward or self.raf:
            self._gathered.discard(stage)

    def finish(self) -> None:
        emulated_sleep(max(0.0, self._free - time.perf_counter()))
        self._free = 0.0
        self._pending.clear()
        self._gathered.clear()


class EmulatedFSDPStage(EmulatedStage):
    """An emulated stage under FSDP2: fused backward in B, its passes gated by ``fsdp``."""

    def __init__(self, fsdp: EmulatedFSDP, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fsdp = fsdp
        self.split = False

    def forward(self, mb: int, x: torch.Tensor, target: Any = None, scale: float = 1.0,
                side: Any = None) -> torch.Tensor:
        self.fsdp.before(self.stage)
        out = super().forward(mb, x, target, scale, side)
        self.fsdp.after(self.stage, forward=True)
        return out

    def backward_input(self, mb: int, grad_out: Any) -> Any:
        return self.backward(mb, grad_out)  # FSDP2: B runs the fused backward

    def backward_weight(self, mb: int) -> None:
        self._pending.discard(mb)

    def backward(self, mb: int, grad_out: Any) -> Any:
        self.fsdp.before(self.stage)
        out = super().backward(mb, grad_out)
        self.fsdp.after(self.stage, forward=False)
        return out


def _times(parts: Mapping[int, nn.Module], dp: int, stride: int, bandwidth: float
           ) -> tuple[dict[int, float], dict[int, float]]:
    net = emulated_network(bandwidth)
    sizes = {s: grad_bytes(m) for s, m in parts.items()}
    return ({s: net.all_gather(b, size=dp, stride=stride) for s, b in sizes.items()},
            {s: net.reduce_scatter(b, size=dp, stride=stride) for s, b in sizes.items()})


def emulated_fsdp(schedule: Schedule, mine: Mapping[int, nn.Module], ms: float,
                  shape: Sequence[int], device: torch.device, *, dp: int, bandwidth: float,
                  reshard_after_forward: bool = True
                  ) -> tuple[EmulatedFSDP, dict[int, EmulatedFSDPStage]]:
    """This rank's emulated FSDP ops and stages."""
    spec = schedule.spec
    fsdp = EmulatedFSDP(*_times(mine, dp, spec.num_ranks, bandwidth), reshard_after_forward)
    return fsdp, {s: EmulatedFSDPStage(fsdp, s, spec.num_stages, ms, shape, device=device)
                  for s in mine}


def simulated_fsdp_ms(schedule: Schedule, costs: CostModel, parts: Sequence[nn.Module], *,
                      dp: int, bandwidth: float, reshard_after_forward: bool = True) -> float:
    """The simulated makespan (ms) of what :func:`emulated_fsdp` runs (costs in ms)."""
    return simulate_fsdp(schedule, costs, param_bytes=[grad_bytes(m) for m in parts], dp=dp,
                         network=emulated_network(bandwidth), seconds_per_unit=1e-3,
                         reshard_after_forward=reshard_after_forward).makespan
