"""The memory headroom of fill: how many bytes a fill task may take on this rank now.

A fill task runs while the training step holds its own memory (activations waiting for their
backward, received tensors, the weights); it must not take what the step will still need.
:class:`Headroom` answers ``headroom()`` for :class:`~pipeblocks.runtime.fill.FillRunner` (a
task starts only when its ``memory`` fits):

- default: what the rank could still allocate, less what the step will still grow by before
  its peak: ``free - (peak - use)``. The peak is the one the schedule reaches (the
  simulator's memory profile says where, :func:`pipeblocks.sim.metrics.bubble_map`),
  measured so far: the allocator's high-water mark on CUDA (``max_memory_allocated``; use:
  ``memory_allocated``; free: the device's free memory plus what the allocator caches
  unused), the process's peak resident memory on CPU (``ru_maxrss``; use: resident now;
  free: the host's available memory shared by the ranks on the host, ``LOCAL_WORLD_SIZE``).
  So in the warm-up and cool-down waits, which hold fewer activations than the steady
  state, fill gets what the step has freed, and a task never pushes the step past the
  memory it had at its peak.
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


def memory_in_use(device: torch.device | str) -> tuple[float, float, float]:
    """(bytes held now, the peak so far, bytes this rank could still allocate) on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        now, peak = torch.cuda.memory_allocated(dev), torch.cuda.max_memory_allocated(dev)
        free = torch.cuda.mem_get_info(dev)[0] + torch.cuda.memory_reserved(dev) - now
        return float(now), float(peak), float(free)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB
    try:
        with open("/proc/self/statm") as f:
            now = float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = float(info["MemAvailable"].split()[0]) * 1024.0
    except (OSError, ValueError, IndexError, KeyError):  # no procfs: nothing to spare
        return peak, peak, 0.0
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return now, max(peak, now), available / ranks


class Headroom:
    """Bytes free for fill on ``device`` now: ``limit`` if given, else what the rank could
    still allocate less what the step will still grow by before its peak."""

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
            now, peak, spare = memory_in_use(self.device)
            free = max(0.0, spare - (peak - now))
        self.lowest = free if self.lowest is None else min(self.lowest, free)
        return free

    def report(self) -> dict[str, Any]:
        """``fill_headroom_mb``: the lowest headroom a task was checked against (None: never
        checked, every task asked for no memory); ``fill_headroom_kind``: default or fixed."""
        return {"fill_headroom_mb": None if self.lowest is None else self.lowest / 2**20,
                "fill_headroom_kind": "free less the step's rise to its peak" if self.limit is None
                else "fixed"}
