"""Fill tasks drawn in the gaps of a timeline picture.

:func:`fill_figure` draws the schedule's timeline (:func:`~pipeblocks.visual.timeline.
timeline_figure`) and, over its grey idle rows, one hatched box per fill task: the simulator's
placement (:func:`pipeblocks.sim.fill.place_fill`) or where the executor's fill hook ran its
tasks (:mod:`pipeblocks.runtime.fill`, times mapped onto the simulated clock).

    >>> import pipeblocks as pb
    >>> from pipeblocks.sim.fill import FillTask, place_fill
    >>> sim = pb.simulate(pb.generate("1f1b", 4, 8))
    >>> fig = fill_figure(sim, place_fill(sim, [FillTask(0.5)] * 20).spans)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeblocks.sim.engine import Simulation
from pipeblocks.sim.fill import FillSpan
from pipeblocks.visual.figure import need_matplotlib, save_figure
from pipeblocks.visual.timeline import timeline_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FILL_COLOR", "fill_figure", "draw_fill"]

FILL_COLOR = "#2ca25f"
"""Fill tasks: green, hatched, so they read as extra work and not as a pass of the schedule."""

_BOX = 0.5  # fill boxes are a little lower than the pass boxes (0.8 of a row) inside the gap


def fill_figure(sim: Simulation, spans: Sequence[Sequence[FillSpan]], *,
                title: str | None = None, width: float | None = None) -> Figure:
    """The timeline of ``sim`` with ``spans[r]`` (rank r's fill tasks) drawn in its gaps."""
    need_matplotlib()
    from matplotlib.patches import Patch

    fig = timeline_figure(sim, title=title, width=width)
    ax = fig.axes[0]
    for rank, row in enumerate(spans):
        bars = [(s.start, s.end - s.start) for s in row]
        if bars:
            ax.broken_barh(bars, (rank - _BOX / 2, _BOX), facecolors=FILL_COLOR,
                           edgecolors="white", linewidth=0.5, hatch="///")
    legend = ax.get_legend()
    handles = list(legend.legend_handles) if legend is not None else []
    handles.append(Patch(facecolor=FILL_COLOR, hatch="///", label="fill"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False, borderaxespad=0.0)
    return fig


def draw_fill(sim: Simulation, spans: Sequence[Sequence[FillSpan]], path: str | Path, *,
              title: str | None = None) -> None:
    """Save :func:`fill_figure` to ``path`` (.png, .svg or .pdf)."""
    save_figure(fill_figure(sim, spans, title=title), Path(path))
