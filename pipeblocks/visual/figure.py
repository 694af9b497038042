"""Plumbing shared by the figures: a pyplot-free Agg figure, a vertical stack of panels, saving.

matplotlib is imported inside the functions, so importing :mod:`pipeblocks.visual` costs nothing
and needs no matplotlib. Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas,
never through pyplot: no global state, no display needed.

    >>> fig = new_figure(4.0, 3.0)
    >>> [round(x, 3) for x in stack(fig, [1.0, 1.0], gap=0.5, top=0.25, bottom=0.25,
    ...                             left=1.0, right=1.0)[0]]
    [0.25, 0.583, 0.5, 0.333]
    >>> save_figure(fig, "figure.bmp")
    Traceback (most recent call last):
    ...
    pipeblocks.errors.SpecError: cannot save a figure as 'figure.bmp': use a .png, .svg or .pdf path
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeblocks.checks import require
from pipeblocks.errors import SpecError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FORMATS", "need_matplotlib", "new_figure", "stack", "save_figure", "points_per_unit"]

log = logging.getLogger(__name__)

FORMATS = (".png", ".svg", ".pdf")
"""The file types a figure can be saved as (chosen by the path's extension)."""
MAX_PIXELS = 2**27
"""The largest PNG :func:`save_figure` writes (about 134 M pixels, 512 MB as RGBA)."""


def need_matplotlib() -> None:
    """MissingDependencyError naming the ``plot`` extra, unless matplotlib imports; the public
    figure functions call it first, before any matplotlib import of theirs."""
    require("matplotlib", "drawing a picture")


def new_figure(width_in: float, height_in: float) -> Figure:
    """A Figure of that size (inches) on an Agg canvas."""
    need_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def stack(
    fig: Figure,
    heights: list[float],
    *,
    gap: float | list[float],
    top: float,
    bottom: float,
    left: float,
    right: float,
) -> list[tuple[float, float, float, float]]:
    """Axes rectangles (figure fractions) of panels stacked top to bottom; sizes in inches.

    ``gap`` is the space between panels (one value or one per gap); the figure's height is set
    to fit everything.
    """
    gaps = list(gap) if isinstance(gap, list) else [gap] * max(0, len(heights) - 1)
    width = float(fig.get_size_inches()[0])
    total = top + bottom + sum(heights) + sum(gaps)
    fig.set_size_inches(width, total)
    rects = []
    y = total - top
    for i, h in enumerate(heights):
        y -= h
        rects.append((left / width, y / total, (width - left - right) / width, h / total))
        if i < len(gaps):
            y -= gaps[i]
    return rects


def points_per_unit(fig: Figure, rect: tuple[float, float, float, float], xmax: float) -> float:
    """Typographic points per data unit along x of an axes at ``rect`` spanning 0..xmax."""
    width_in = float(fig.get_size_inches()[0]) * rect[2]
    return width_in * 72.0 / xmax if xmax > 0 else 0.0


def save_figure(fig: Figure, path: str | Path, *, dpi: float = 100.0) -> Path:
    """Save by extension (.png, .svg, .pdf); text stays text in SVG and PDF. Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise SpecError(
            f"cannot save a figure as {str(path)!r}: use a {', '.join(FORMATS[:-1])} or "
            f"{FORMATS[-1]} path"
        )
    if suffix == ".png":  # Agg refuses 2**16 pixels a side; far less already takes GBs
        w, h = (float(x) * dpi for x in fig.get_size_inches())
        if max(w, h) >= 2**16 or w * h > MAX_PIXELS:
            raise SpecError(
                f"a {w:.0f} x {h:.0f} pixel PNG is too large (at most {MAX_PIXELS:,} pixels, "
                f"under 65,536 a side); lower the dpi or the width, draw fewer ranks, or save "
                f"as .svg or .pdf"
            )
    import matplotlib

    # Text as text keeps SVGs small and searchable; Type 42 fonts keep PDFs editable. No dates
    # in the metadata, so a re-rendered gallery only changes where a picture changes.
    metadata = {".png": {"Software": None}, ".svg": {"Date": None}, ".pdf": {"CreationDate": None}}
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "pb"}):
        fig.savefig(path, dpi=dpi, metadata=metadata[suffix])
    log.info("wrote %s", path)
    return path
