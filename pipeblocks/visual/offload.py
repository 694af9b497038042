"""Offload on the pictures: the copies under each rank's row, host memory under device memory.

Each rank's copies (:mod:`pipeblocks.sim.offload`) are thin bars in the gap under its row:
offloads (device to host) in the upper half, reloads (host to device) in the lower half, at
the times the simulator gives them on the host link. The memory picture gains a panel of each
rank's host memory under the device memory panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeblocks.ir.moves import MoveKind
from pipeblocks.sim.engine import Simulation

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.patches import Patch

__all__ = ["draw_moves", "move_handles", "draw_host_memory", "OFFLOAD_COLOR", "RELOAD_COLOR"]

OFFLOAD_COLOR = "#2a9d8f"
RELOAD_COLOR = "#e76f51"


def draw_moves(ax: Axes, sim: Simulation, half: float) -> None:
    """The copies of every rank as bars under its row (nothing without offload)."""
    gap = 0.5 - half  # from the box's edge to the middle between rows
    for rank, moves in enumerate(sim.moves):
        for kind, face, k in ((MoveKind.OFFLOAD, OFFLOAD_COLOR, 0),
                              (MoveKind.RELOAD, RELOAD_COLOR, 1)):
            bars = [(mv.start, max(mv.end - mv.start, 1e-9)) for mv in moves
                    if mv.move.kind is kind]
            if bars:
                ax.broken_barh(bars, (rank + half + k * gap, gap), facecolors=face,
                               linewidth=0)


def move_handles() -> list[Patch]:
    """Legend entries for the copies."""
    from matplotlib.patches import Patch

    return [Patch(facecolor=OFFLOAD_COLOR, label="offload (to host)"),
            Patch(facecolor=RELOAD_COLOR, label="reload (to device)")]


def draw_host_memory(ax: Axes, sim: Simulation, xmax: float, scale: float,
                     colors: Sequence[Any]) -> None:
    """Each rank's host memory over time (the same scale as the device panel above)."""
    top = 0.0
    for rank, trace in enumerate(sim.host_memory):
        last: dict[float, float] = {}
        for t, h in trace:
            last[t] = h / scale
        xs, ys = [*last, xmax], list(last.values())
        ax.step(xs, [*ys, ys[-1]], where="post", color=colors[rank], linewidth=1.1,
                label=f"rank {rank}: host peak {sim.host_peak[rank] / scale:.2f}")
        top = max(top, sim.host_peak[rank] / scale)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_ylabel("host memory", fontsize=8)
    ax.set_xlabel("time (cost-model units)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", linewidth=0.3, alpha=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(sim.host_memory) <= 10:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
                  borderaxespad=0.0)
