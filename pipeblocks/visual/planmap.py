"""The planner's picture: MFU against memory per GPU, one marker per schedule family.

``points`` maps a schedule name to its plans as ``(memory_gb, mfu, fits)`` triples; plans that
do not fit are drawn hollow, a dashed line marks the GPU's memory, and the axis stops at 1.5
times it.

    >>> fig = plans_figure({"1f1b": [(40.0, 0.4, True)], "v-half": [(90.0, 0.5, False)]}, 80.0)
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['1f1b', 'v-half']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeblocks.visual.figure import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plans_figure", "plot_plans"]

_MARKERS = "os^vD<>Pp*hX"


def plans_figure(
    points: Mapping[str, Sequence[tuple[float, float, bool]]], gpu_memory_gb: float
) -> Figure:
    """The scatter of every plan; fitting plans filled, the others hollow."""
    fig = new_figure(7.0, 4.5)
    ax = fig.add_axes((0.1, 0.12, 0.68, 0.8))
    for i, (name, pts) in enumerate(points.items()):
        marker = _MARKERS[i % len(_MARKERS)]
        color = f"C{i % 10}"
        fit = [(m, u * 100) for m, u, ok in pts if ok]
        over = [(m, u * 100) for m, u, ok in pts if not ok]
        ax.scatter([p[0] for p in fit], [p[1] for p in fit], marker=marker, color=color,
                   s=14, label=name)
        ax.scatter([p[0] for p in over], [p[1] for p in over], marker=marker, s=14,
                   facecolors="none", edgecolors=color, alpha=0.4)
    ax.axvline(gpu_memory_gb, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1.5 * gpu_memory_gb)  # plans far over the memory only crowd the picture
    ax.set_xlabel("memory per GPU (GB)")
    ax.set_ylabel("MFU (%)")
    ax.set_title("plans: filled fit in memory, hollow do not")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def plot_plans(
    points: Mapping[str, Sequence[tuple[float, float, bool]]],
    gpu_memory_gb: float,
    path: str | Path,
) -> None:
    """Draw :func:`plans_figure` into ``path`` (.png, .svg or .pdf)."""
    save_figure(plans_figure(points, gpu_memory_gb), path)
