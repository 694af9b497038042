"""The committed gallery (docs/gallery.md, docs/img) covers every generator and is up to date."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, names
from pipeblocks.sim import UniformCosts, simulate

DOCS = Path(__file__).resolve().parents[2] / "docs"
STALE = "docs/gallery.md is stale: run `make gallery` (docs/make_gallery.py) and commit docs/"


def _rows() -> dict[str, list[str]]:
    text = (DOCS / "gallery.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"\[([\w-]+)\]\(#[\w-]+\)", cells[0]) if cells else None
        if m:
            rows[m.group(1)] = cells
        elif len(cells) == 7 and cells[-1].startswith("not drawn"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("name", names())
def test_every_generator_is_in_the_gallery(name: str) -> None:
    """Each generator has its row, with the simulated metrics and a small PNG, or its skip note."""
    rows = _rows()
    assert name in rows, STALE
    try:
        schedule = generate(name, 4, 8)
    except SpecError:
        assert rows[name][-1].startswith("not drawn"), STALE
        return
    sim = simulate(schedule, UniformCosts(f=1, b=1, w=1, comm=0))
    cells = rows[name]
    want = [f"{sim.bubble_rate:.1%}", f"{sim.bubble_rate_global:.1%}", f"{sim.peak_fraction:.2f}"]
    assert cells[2:5] == want, STALE
    image = DOCS / "img" / f"{name}.png"
    assert cells[-1] == f"[{name}.png](img/{name}.png)", STALE
    data = image.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 150 * 1024


def test_every_linked_image_exists() -> None:
    """Every image the gallery page shows or links is committed beside it."""
    text = (DOCS / "gallery.md").read_text()
    links = re.findall(r"\((img/[^)]+\.png)\)", text)
    assert links
    missing = [link for link in links if not (DOCS / link).is_file()]
    assert missing == [], STALE
