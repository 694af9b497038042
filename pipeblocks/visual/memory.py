"""Memory actions on the timeline: the recomputed forward at the start of a backward.

A recomputed stage's B (or BW) begins by re-running its forward (:mod:`pipeblocks.ir.recompute`);
the timeline hatches that first part of the box, so the price of the saved memory is visible
where it is paid. The memory panel under it already shows the lower hold (the simulator's
trace).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeblocks.ir.actions import Pass
from pipeblocks.sim.engine import Simulation

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.patches import Patch

__all__ = ["draw_recompute", "recompute_handle"]

_HATCH = "////"


def draw_recompute(ax: Axes, sim: Simulation, half: float, box: float) -> None:
    """Hatch the recompute part (the stage's F time, read off its F spans) of every recomputed
    backward."""
    schedule = sim.schedule
    if not schedule.recompute:
        return
    f = {s.action.stage: s.end - s.start for row in sim.spans for s in row
         if s.action.kind is Pass.F}
    for rank, row in enumerate(sim.spans):
        bars = [(s.start, min(f[s.action.stage], s.end - s.start)) for s in row
                if s.action.stage in schedule.recompute and s.action.kind.frees_input_grad]
        if bars:
            ax.broken_barh(bars, (rank - half, box), facecolors="none", edgecolors="black",
                           hatch=_HATCH, linewidth=0.0, alpha=0.45)


def recompute_handle() -> Patch:
    """The legend entry for the hatched part."""
    from matplotlib.patches import Patch

    return Patch(facecolor="white", edgecolor="black", hatch=_HATCH, label="recompute (in B)")
