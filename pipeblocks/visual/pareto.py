"""The memory-bubble trade-off: candidate schedules, their Pareto front, named schedules marked.

``points`` are ``(memory, bubble)`` pairs (e.g. peak as a multiple of 1F1B's and the paper's
bubble rate) of the schedules a search made; ``named`` maps a schedule's name to its pair.
Both axes are "lower is better"; the front is the points no other point beats on both.
Named schedules at the same spot share one label.

    >>> front([(1.0, 0.2), (0.5, 0.4), (1.0, 0.3), (2.0, 0.2), (1.5, 0.0)])
    [(0.5, 0.4), (1.0, 0.2), (1.5, 0.0)]
    >>> fig = pareto_figure([(1.0, 0.2), (0.5, 0.4)], {"1f1b": (1.0, 0.27)})
    >>> [t.get_text() for t in fig.axes[0].texts]
    ['1f1b']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeblocks.errors import SpecError
from pipeblocks.visual.figure import need_matplotlib, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["front", "pareto_figure", "plot_pareto"]

Point = tuple[float, float]


def _check(points: Iterable[Point], what: str) -> list[Point]:
    out = []
    for pt in points:
        try:
            x, y = (float(c) for c in pt)
        except (TypeError, ValueError):
            raise SpecError(
                f"{what} must be (memory, bubble) pairs of numbers (got {pt!r})"
            ) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise SpecError(f"{what} must be finite (got {pt!r})")
        out.append((x, y))
    return out


def front(points: Iterable[Point]) -> list[Point]:
    """The Pareto front (lower memory and lower bubble are better), by memory ascending."""
    best = math.inf
    out = []
    for x, y in sorted(set(_check(points, "points"))):
        if y < best:
            out.append((x, y))
            best = y
    return out


def pareto_figure(points: Iterable[Point], named: Mapping[str, Point], *,
                  xlabel: str = "peak activation memory (× 1F1B peak)",
                  ylabel: str = "bubble rate (paper metric)", title: str = "") -> Figure:
    """The figure: every point in grey, the front as a staircase, named schedules marked."""
    need_matplotlib()
    pts = _check(points, "points")
    marks = dict(zip(named, _check(named.values(), "named schedules"), strict=True))
    fig = new_figure(7.0, 4.8)
    ax = fig.add_axes((0.11, 0.12, 0.85, 0.78 if title else 0.83))
    if pts:
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, s=12, color="#9a9a9a", alpha=0.7, linewidths=0,
                   label=f"candidates ({len(pts)})")
        fr = front(pts)
        fx, fy = zip(*fr, strict=True)
        ax.step(fx, fy, where="post", color="#0072b2", linewidth=1.4, label="Pareto front")
        ax.scatter(fx, fy, s=18, color="#0072b2", zorder=3)
    # Names at one spot share a label, so coinciding schedules never print on top of each other.
    spots: dict[Point, list[str]] = {}
    for name, pt in marks.items():
        spots.setdefault((round(pt[0], 6), round(pt[1], 6)), []).append(name)
    if spots:
        xs_named, ys_named = zip(*spots, strict=True)
        ax.scatter(xs_named, ys_named, s=40, marker="D", color="#d55e00", zorder=4,
                   edgecolors="white", linewidths=0.6, label="named schedules")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    lo, hi = ax.get_xlim()
    for (x, y), names in spots.items():
        # Labels of points in the right fifth go to their left, so they stay inside the axes.
        left = x > lo + 0.8 * (hi - lo)
        ax.annotate(", ".join(names), (x, y), xytext=(-6 if left else 6, 5),
                    textcoords="offset points", ha="right" if left else "left", fontsize=8,
                    color="#222222")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(linewidth=0.3, alpha=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if pts or marks:
        ax.legend(fontsize=8, frameon=False, loc="best")
    if title:
        ax.set_title(title, loc="left", fontsize=10)
    return fig


def plot_pareto(points: Iterable[Point], named: Mapping[str, Point], path: str | Path, *,
                title: str = "", dpi: float = 100.0) -> Path:
    """Save :func:`pareto_figure` to ``path`` (.png, .svg or .pdf); returns the path."""
    return save_figure(pareto_figure(points, named, title=title), path, dpi=dpi)
