"""The memory headroom of fill: how many bytes a fill task may take on this rank now.

A fill task runs while the training step holds its own memory (activations waiting for their
backward, received tensors, the weights); it must not push the rank past what the step itself
needs at its peak. :class:`Headroom` answers ``headroom()`` for
:class:`~pipeblocks.runtime.fill.FillRunner` (a task starts only when its ``memory`` fits):

- default: the rank's memory peak minus what it holds now. The peak is the one the schedule
  reaches (the simulator's memory peak of the rank, :func:`pipeblocks.sim.metrics.bubble_map`,
  is where it lies), measured: the device allocator's high-water mark on CUDA
  (``torch.cuda.max_memory_allocated``), the process's peak resident memory on CPU
  (``ru_maxrss``); what it holds now is ``torch.cuda.memory_allocated`` or the resident memory
  now. So fill uses what the step has freed since its peak (its warm-up and cool-down waits
  hold fewer activations than the steady state) and never raises the rank's peak. On CPU
  memory freed in small blocks may stay resident: the headroom then reads low, never high.
- ``limit`` (``train --fill-headroom MB``): a fixed number of bytes fill may take, whatever
  the step holds (the user knows the device's spare memory).

The lowest headroom seen is reported (``fill_headroom_mb``).

    >>> h = Headroom("cpu", limit=2**20)
    >>> h(), h.report()["fill_headroom_mb"]
    (1048576.0, 1.0)
"""

from __future__ import annotations

import os
import resource
from typing import Any

import torch

from pipeblocks.errors import SpecError

__all__ = ["Headroom", "memory_in_use"]


def memory_in_use(device: torch.device | str) -> tuple[float, float]:
    """(bytes held now, the peak so far) of this process on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return float(torch.cuda.memory_allocated(dev)), float(torch.cuda.max_memory_allocated(dev))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no procfs: assume nothing was freed
        now = peak
    return float(now), max(peak, float(now))


class Headroom:
    """Bytes free for fill on ``device`` now: ``limit`` if given, else the peak minus the use."""

    def __init__(self, device: torch.device | str, limit: float | None = None) -> None:
        if limit is not None and not limit >= 0:
            raise SpecError(f"the fill headroom must be >= 0 bytes (got {limit}); e.g. "
                            f"--fill-headroom 256 (MB)")
        self.device = torch.device(device)
        self.limit = limit
        self.lowest: float | None = None

    def __call__(self) -> float:
        if self.limit is not None:
            free = float(self.limit)
        else:
            now, peak = memory_in_use(self.device)
            free = max(0.0, peak - now)
        self.lowest = free if self.lowest is None else min(self.lowest, free)
        return free

    def report(self) -> dict[str, Any]:
        """``fill_headroom_mb``: the lowest headroom a task was checked against (None: never
        checked, every task asked for no memory); ``fill_headroom_kind``: default or fixed."""
        return {"fill_headroom_mb": None if self.lowest is None else self.lowest / 2**20,
                "fill_headroom_kind": "peak minus use" if self.limit is None else "fixed"}
