"""Colours of the pictures: one hue per pass kind, lighter shades for later chunks.

The hues are the Okabe-Ito colour-blind-safe set: F blue, B orange, W green, BW vermillion.
A pass of local stage (chunk) c on a rank that holds v chunks is its kind's hue mixed with white
by ``0.55 * c / (v - 1)``, so a V's two chunks (c = 0, 1) read as dark and light of the same colour.

    >>> from pipeblocks.ir import Pass
    >>> color(Pass.F, chunk=0, chunks=2)
    '#0072b2'
    >>> color(Pass.F, chunk=1, chunks=2)
    '#8cc0dc'
    >>> text_color(color(Pass.F, 0, 1)), text_color(color(Pass.W, 1, 2))
    ('white', 'black')
"""

from __future__ import annotations

from pipeblocks.ir.actions import Pass

__all__ = ["KIND_COLORS", "IDLE", "BUDGET", "color", "text_color", "kind_label"]

KIND_COLORS: dict[Pass, str] = {
    Pass.F: "#0072b2",
    Pass.B: "#e69f00",
    Pass.W: "#009e73",
    Pass.BW: "#d55e00",
}
"""Hue of each pass kind (chunk 0)."""

IDLE = "#e4e4e4"
"""Background of a rank's row: every stretch of it that shows is idle time."""

BUDGET = "#cc0000"
"""The memory budget line."""

_KIND_NAMES = {
    Pass.F: "F forward",
    Pass.B: "B input grad",
    Pass.W: "W weight grad",
    Pass.BW: "BW backward",
}


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def color(kind: Pass, chunk: int = 0, chunks: int = 1) -> str:
    """The face colour of a pass: the kind's hue, lightened for chunk (local stage) > 0."""
    mix = 0.55 * chunk / (chunks - 1) if chunks > 1 else 0.0
    r, g, b = (round(c + (255 - c) * mix) for c in _rgb(KIND_COLORS[kind]))
    return f"#{r:02x}{g:02x}{b:02x}"


def text_color(face: str) -> str:
    """Black or white, whichever reads better on ``face`` (relative luminance, sRGB weights)."""
    r, g, b = _rgb(face)
    luminance = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
    return "black" if luminance > 0.5 else "white"


def kind_label(kind: Pass, chunk: int | None = None) -> str:
    """Legend text: ``F forward`` or, with a chunk, ``F forward, chunk 1``."""
    name = _KIND_NAMES[kind]
    return name if chunk is None else f"{name}, chunk {chunk}"
