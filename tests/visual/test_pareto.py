"""The memory-bubble plot: its front against a brute-force one, files, merged labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.visual import front, pareto_figure, plot_pareto

coords = st.floats(0, 4, allow_nan=False).map(lambda x: round(x, 2))
points = st.lists(st.tuples(coords, coords), max_size=40)


@given(points)
def test_front_is_the_undominated_set(pts: list[tuple[float, float]]) -> None:
    """A point is on the front iff no other point is at least as good on both axes."""
    def dominated(a: tuple[float, float]) -> bool:
        return any(b != a and b[0] <= a[0] and b[1] <= a[1] for b in pts)

    assert front(pts) == sorted({a for a in pts if not dominated(a)})


def test_synthetic_points_plot(tmp_path: Path) -> None:
    """Synthetic candidates, front and named schedules land in the figure and in every format."""
    pts = [(0.25 + 0.05 * i, max(0.0, 0.5 - 0.04 * i) + 0.01 * (i % 3)) for i in range(30)]
    named = {"1f1b": (1.0, 0.27), "zb-h1": (1.0, 0.11), "v-half": (0.5, 0.2), "twin": (0.5, 0.2)}
    fig = pareto_figure(pts, named)
    ax = fig.axes[0]
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["1f1b", "v-half, twin", "zb-h1"]  # one label per spot
    staircase = [ln for ln in ax.lines if ln.get_label() == "Pareto front"]
    assert len(staircase) == 1
    assert sorted(set(zip(*staircase[0].get_data(), strict=True))) == front(pts)
    for ext, head in ((".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF-")):
        out = plot_pareto(pts, named, tmp_path / f"pareto{ext}", title="synthetic")
        assert out.read_bytes().startswith(head)


def test_empty_and_bad_points(tmp_path: Path) -> None:
    """No points still draws the named ones; malformed pairs are a SpecError."""
    assert plot_pareto([], {"1f1b": (1, 0.27)}, tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(SpecError, match="pairs"):
        front([(1.0, 2.0, 3.0)])  # type: ignore[list-item]
    with pytest.raises(SpecError, match="finite"):
        pareto_figure([(float("nan"), 0.1)], {})
