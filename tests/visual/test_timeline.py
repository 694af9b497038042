"""Timeline and comparison figures: file formats, one box per pass at its simulated time."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import Action, Pass, PipelineSpec, Schedule, validate
from pipeblocks.sim import UniformCosts, simulate
from pipeblocks.visual import compare_figure, draw_compare, draw_timeline, timeline_figure
from pipeblocks.visual.palette import IDLE, color

HEADERS = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-"}


def _v_schedule() -> Schedule:
    """p=2, m=2 on the V placement, hand-written: stages 0,3 on rank 0 and 1,2 on rank 1."""
    spec = PipelineSpec(2, 2, 2, "v")
    a = Action.parse
    r0 = [a(t) for t in "0F0 0F1 3F0 3B0 3W0 3F1 3B1 3W1 0B0 0W0 0B1 0W1".split()]
    r1 = [a(t) for t in "1F0 2F0 1F1 2F1 2B0 2W0 1B0 1W0 2B1 2W1 1B1 1W1".split()]
    schedule = Schedule(spec, (tuple(r0), tuple(r1)), name="hand-v")
    validate(schedule)
    return schedule


def _well_formed(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix == ".svg":
        assert data.startswith(b"<?xml") and b"<svg" in data[:2000]
        assert data.rstrip().endswith(b"</svg>")
    else:
        assert data.startswith(HEADERS[path.suffix])
    if path.suffix == ".pdf":
        assert data.rstrip().endswith(b"%%EOF")
    if path.suffix == ".png":
        assert data.endswith(b"IEND\xaeB`\x82")


@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf"])
def test_timeline_files_are_well_formed(tmp_path: Path, ext: str) -> None:
    """draw_timeline writes a complete PNG, SVG or PDF chosen by the extension."""
    sim = simulate(generate("1f1b", 2, 3))
    out = draw_timeline(sim, tmp_path / f"t{ext}", memory_fraction=0.5)
    _well_formed(out)


@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf"])
def test_compare_files_are_well_formed(tmp_path: Path, ext: str) -> None:
    """draw_compare writes a complete file of every supported type."""
    sims = [simulate(generate(n, 2, 2)) for n in ("gpipe", "1f1b")]
    _well_formed(draw_compare(sims, tmp_path / f"c{ext}"))


def test_bad_extension_and_budget_are_spec_errors(tmp_path: Path) -> None:
    """Unknown extensions and non-positive budgets are refused with the fix in the message."""
    sim = simulate(generate("1f1b", 2, 2))
    with pytest.raises(SpecError, match=r"\.png, \.svg or \.pdf"):
        draw_timeline(sim, tmp_path / "t.jpg")
    with pytest.raises(SpecError, match="must be > 0"):
        timeline_figure(sim, memory_fraction=0)
    with pytest.raises(SpecError, match="at least one"):
        compare_figure([])
    assert not (tmp_path / "t.jpg").exists()


def _boxes(ax):  # type: ignore[no-untyped-def]
    """(rank, start, end, face colour) of every drawn box that is not the idle background."""
    from matplotlib.colors import to_hex

    out = []
    for coll in ax.collections:
        face = to_hex(coll.get_facecolor()[0])
        if face == IDLE:
            continue
        for path in coll.get_paths():
            xs, ys = path.vertices[:, 0], path.vertices[:, 1]
            out.append((round(float(ys.mean())), round(float(xs.min()), 9),
                        round(float(xs.max()), 9), face))
    return out


def test_one_box_per_pass_at_its_simulated_time() -> None:
    """Every pass is one box spanning exactly its simulated start..end, on its rank's row."""
    sim = simulate(generate("1f1b", 3, 5), UniformCosts(f=1, b=2, w=1, comm=0.25))
    fig = timeline_figure(sim)
    got = sorted((r, s, e) for r, s, e, _ in _boxes(fig.axes[0]))
    want = sorted(
        (sp.rank, round(sp.start, 9), round(sp.end, 9)) for row in sim.spans for sp in row
    )
    assert got == want


def test_boxes_coloured_by_kind_and_chunk() -> None:
    """Each box has its kind's colour, shaded by its chunk; a V's two chunks differ."""
    sim = simulate(_v_schedule())
    fig = timeline_figure(sim)
    spec = sim.schedule.spec
    want = sorted(
        (sp.rank, round(sp.start, 9), round(sp.end, 9),
         color(sp.action.kind, spec.local_of(sp.action.stage), 2))
        for row in sim.spans for sp in row
    )
    assert sorted(_boxes(fig.axes[0])) == want
    assert color(Pass.F, 0, 2) != color(Pass.F, 1, 2)


def test_microbatch_numbers_sit_inside_their_boxes() -> None:
    """Each label is the microbatch number centred in its box; a wide figure labels every box."""
    sim = simulate(generate("gpipe", 2, 4))
    ax = timeline_figure(sim, width=16).axes[0]
    spans = {(sp.rank, (sp.start + sp.end) / 2): sp.action.mb for row in sim.spans for sp in row}
    labels = {
        (round(t.get_position()[1]), t.get_position()[0]): int(t.get_text()) for t in ax.texts
    }
    assert labels == spans


def test_title_and_memory_panel() -> None:
    """Title names the schedule and metrics; memory shows each rank's peak and the budget line."""
    sim = simulate(generate("1f1b", 4, 8))
    fig = timeline_figure(sim, memory_fraction=0.5)
    title = fig.axes[0].get_title(loc="left")
    assert "1f1b" in title and "p=4" in title and "m=8" in title and "27.3%" in title
    assert "peak 1.00" in title
    mem = fig.axes[1]
    budget = [ln for ln in mem.lines if str(ln.get_label()).startswith("budget")]
    assert len(budget) == 1 and list(budget[0].get_ydata()) == [0.5, 0.5]
    assert budget[0].get_label() == "budget 0.5 (exceeded)"  # 1F1B's peak is 1
    fig = timeline_figure(sim, memory_fraction=1.0)
    assert [ln.get_label() for ln in fig.axes[1].lines if ln.get_linestyle() == "--"] == [
        "budget 1"
    ]
    # 1F1B: rank r peaks at (p - r) / p of the whole model (docs/design.md, "Closed forms").
    markers = [ln for ln in mem.lines if ln.get_marker() == "v"]
    assert [float(ln.get_ydata()[0]) for ln in markers] == pytest.approx([1, 0.75, 0.5, 0.25])
    steps = [ln for ln in mem.lines if str(ln.get_label()).startswith("rank ")]
    assert [max(ln.get_ydata()) for ln in steps] == pytest.approx([1, 0.75, 0.5, 0.25])


def test_compare_shares_one_time_axis() -> None:
    """Compared schedules share x limits (the longest makespan) and each gets its row axes."""
    sims = [simulate(generate(n, 4, 8)) for n in ("gpipe", "1f1b")] + [simulate(_v_schedule())]
    fig = compare_figure(sims, memory_fraction=1.0)
    assert len(fig.axes) == len(sims) + 1
    xmax = max(s.makespan for s in sims)
    assert {ax.get_xlim() for ax in fig.axes} == {(0.0, xmax)}
    for ax, sim in zip(fig.axes, sims, strict=False):
        assert len(_boxes(ax)) == sim.schedule.num_actions
        assert sim.schedule.name in ax.get_title(loc="left")
    mem = fig.axes[-1]
    peaks = [max(ln.get_ydata()) for ln in mem.lines if "peak" in str(ln.get_label())]
    assert peaks == pytest.approx([s.peak_fraction for s in sims])


def test_matplotlib_is_imported_only_for_figures() -> None:
    """Importing pipeblocks.visual, tracing and timed ASCII never import matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import pipeblocks as pb\n"
        "from pipeblocks.visual import chrome_trace, timed_ascii\n"
        "sim = pb.simulate(pb.generate('1f1b', 2, 2))\n"
        "chrome_trace(sim); timed_ascii(sim, width=40)\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'\n"
        "from pipeblocks.visual import timeline_figure\n"
        "timeline_figure(sim)\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_many_ranks_keep_a_short_memory_legend() -> None:
    """Past 10 ranks the memory legend names 6 ranks spread evenly, first and last included."""
    sim = simulate(generate("1f1b", 16, 16))
    fig = timeline_figure(sim)
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert [t.split(":")[0] for t in texts] == [f"rank {r}" for r in (0, 3, 6, 9, 12, 15)]
    assert texts[0] == "rank 0: peak 1.00" and texts[-1] == "rank 15: peak 0.06"


def test_offload_draws_its_copies_and_a_host_memory_panel() -> None:
    """With offload the timeline has one bar per copy under the rows (at the simulated times,
    in the offload and reload colours) and a third panel with each rank's host memory."""
    from pipeblocks.ir.moves import OffloadLink
    from pipeblocks.ir.offload import with_offload
    from pipeblocks.visual.offload import OFFLOAD_COLOR, RELOAD_COLOR

    sim = simulate(with_offload(generate("1f1b", 4, 8), link=OffloadLink(1.5)))
    fig = timeline_figure(sim)
    assert len(fig.axes) == 3
    top, host = fig.axes[0], fig.axes[2]
    drawn = set()
    for coll in top.collections:
        face = tuple(round(c, 3) for c in coll.get_facecolor()[0][:3])
        for path in coll.get_paths():
            x0 = round(float(path.vertices[:, 0].min()), 6)
            drawn.add((face, x0))
    from matplotlib.colors import to_rgb

    for rank_moves in sim.moves:
        for mv in rank_moves:
            col = OFFLOAD_COLOR if mv.move.kind.value == "offload" else RELOAD_COLOR
            assert (tuple(round(c, 3) for c in to_rgb(col)), round(mv.start, 6)) in drawn
    assert len(host.lines) == 4 and max(max(ln.get_ydata()) for ln in host.lines) > 0
    plain = timeline_figure(simulate(generate("1f1b", 4, 8)))
    assert len(plain.axes) == 2
