"""Timeline figures like the papers': one row per rank on a true time axis, memory under it.

Each pass is a box from its simulated start to its end, coloured by kind (F, B, W, BW) and
shaded by chunk (the stage's local index: dark chunk 0, light chunk 1, see
:mod:`pipeblocks.visual.palette`), with its microbatch number inside where the number fits.
A rank's row is grey underneath, so every grey stretch is idle time. Under the timeline each
rank's activation memory is drawn over time, in multiples of 1F1B's peak (the whole model's
activation for one microbatch, see docs/design.md, "Memory accounting"), its peak marked with a
triangle, and the budget as a dashed line when a memory fraction is given.

:func:`compare_figure` stacks several schedules on one shared time axis, with the memory of the
fullest rank of each (the per-time maximum over ranks) in one panel under them.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> fig = timeline_figure(simulate(generate("1f1b", 4, 8)), memory_fraction=1.0)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['', 'memory (× 1F1B peak)']
    >>> sorted(t.get_text() for t in fig.axes[0].texts)[:3]   # microbatch numbers in boxes
    ['0', '0', '0']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.offload import offload_label
from pipeblocks.ir.recompute import recompute_label
from pipeblocks.sim.engine import Simulation
from pipeblocks.visual.figure import (
    need_matplotlib,
    new_figure,
    points_per_unit,
    save_figure,
    stack,
)
from pipeblocks.visual.memory import draw_recompute, recompute_handle
from pipeblocks.visual.offload import draw_host_memory, draw_moves, move_handles
from pipeblocks.visual.palette import BUDGET, IDLE, color, kind_label, text_color

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

__all__ = ["timeline_figure", "compare_figure", "draw_timeline", "draw_compare", "memory_scale"]

# Layout in inches. The right margin holds the legends, so they never cover a pass.
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.75, 2.15, 0.62, 0.5
_ROW = 0.3  # one rank's row
_MEMORY = 1.7  # the memory panel
_LEGEND_ROW = 0.17  # one legend entry at 8 pt
_BOX = 0.8  # a box's height as a fraction of its row
_MIN_LABEL_PT = 12.0  # aim: 9 passes in 10 at least this wide, so their numbers fit
_KIND_ORDER = (Pass.F, Pass.B, Pass.W, Pass.BW)


def memory_scale(sim: Simulation) -> tuple[float, str]:
    """Divisor that turns the cost model's memory into multiples of 1F1B's peak, and a label.

    The simulator reports ``peak_fraction = max(peak) / whole`` where ``whole`` is the model's
    activation for one microbatch; when nothing is held the unit stays the cost model's.
    """
    top = max(sim.peak_memory, default=0.0)
    if top > 0 and sim.peak_fraction > 0:
        return top / sim.peak_fraction, "memory (× 1F1B peak)"
    return 1.0, "memory (cost-model units)"


def _keys(sim: Simulation) -> set[tuple[Pass, int]]:
    spec = sim.schedule.spec
    return {(s.action.kind, spec.local_of(s.action.stage)) for row in sim.spans for s in row}


def _kind_handles(keys: set[tuple[Pass, int]], chunks: int) -> list[Patch]:
    from matplotlib.patches import Patch

    handles = []
    for kind in _KIND_ORDER:
        for chunk in range(chunks):
            if (kind, chunk) in keys:
                label = kind_label(kind, chunk if chunks > 1 else None)
                handles.append(Patch(facecolor=color(kind, chunk, chunks), label=label))
    handles.append(Patch(facecolor=IDLE, label="idle"))
    return handles


def _short_pass(sims: Sequence[Simulation]) -> float:
    """The 10th percentile of the pass durations across the schedules (data units)."""
    durations = sorted(s.end - s.start for sim in sims for row in sim.spans for s in row)
    return durations[len(durations) // 10] if durations else 1.0


def _width_in(sims: Sequence[Simulation], xmax: float, width: float | None) -> float:
    """Figure width: wide enough for 9 passes in 10 to hold their number, within 8..18 in."""
    if width is not None:
        if not width > _LEFT + _RIGHT + 1:
            raise SpecError(f"figure width must exceed {_LEFT + _RIGHT + 1} in (got {width})")
        return width
    short = _short_pass(sims)
    axes_in = xmax / short * _MIN_LABEL_PT / 72 if short > 0 else 6.0
    return min(18.0, max(8.0, axes_in + _LEFT + _RIGHT))


def _draw_rows(ax: Axes, fig: Figure, rect: tuple[float, float, float, float],
               sim: Simulation, xmax: float) -> None:
    """Grey rank rows, one box per pass, microbatch numbers where they fit; rank 0 on top."""
    spec = sim.schedule.spec
    p, v = spec.num_ranks, spec.stages_per_rank
    row_pt = fig.get_size_inches()[1] * rect[3] * 72 / p
    per_unit = points_per_unit(fig, rect, xmax)
    # One font size per panel, small enough for the longest number in 9 passes in 10, so the
    # labels do not switch off at mb 10; digits are about 0.6 em wide, 1 pt clear each side.
    digits = len(str(spec.num_microbatches - 1))
    room = _short_pass([sim]) * per_unit - 2
    font = max(5.5, min(8.0, row_pt * _BOX * 0.6, room / (0.6 * digits)))
    edge = 0.8 if room >= 2 else 0.0  # white gaps between boxes, unless they would hide them
    half = _BOX / 2
    for rank, row in enumerate(sim.spans):
        ax.broken_barh([(0.0, xmax)], (rank - half, _BOX), facecolors=IDLE, linewidth=0)
        groups: dict[tuple[Pass, int], list[tuple[float, float]]] = {}
        for s in row:
            chunk = spec.local_of(s.action.stage)
            groups.setdefault((s.action.kind, chunk), []).append((s.start, s.end - s.start))
            text = str(s.action.mb)
            if (s.end - s.start) * per_unit >= 0.6 * font * len(text) + 2:
                face = color(s.action.kind, chunk, v)
                ax.text((s.start + s.end) / 2, rank, text, ha="center", va="center",
                        fontsize=font, color=text_color(face))
        for (kind, chunk), bars in groups.items():
            ax.broken_barh(bars, (rank - half, _BOX), facecolors=color(kind, chunk, v),
                           edgecolors="white", linewidth=edge)
    draw_recompute(ax, sim, half, _BOX)  # nothing unless the schedule recomputes
    draw_moves(ax, sim, half)  # nothing unless it offloads (visual/offload.py)
    ax.set_ylim(p - 0.5, -0.5)
    ax.set_yticks(range(p), [f"rank {r}" for r in range(p)], fontsize=8)
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelbottom=False)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _steps(trace: Sequence[tuple[float, float]], xmax: float,
           scale: float) -> tuple[list[float], list[float]]:
    """Step-plot points; of several steps at one time only the last is drawn (a BW that ends
    as the next F starts would otherwise draw a spike down to the freed level)."""
    last: dict[float, float] = {}
    for t, h in trace:
        last[t] = h / scale
    xs = list(last) + [xmax]
    ys = list(last.values())
    return xs, ys + ys[-1:]


def _title(sim: Simulation) -> str:
    spec = sim.schedule.spec
    name = sim.schedule.name or "schedule"
    return (
        f"{name}   p={spec.num_ranks}  m={spec.num_microbatches}  v={spec.stages_per_rank} "
        f"({spec.placement.value} placement)\n"
        f"bubble {sim.bubble_rate:.1%} (paper metric), {sim.bubble_rate_global:.1%} global   "
        f"peak {sim.peak_fraction:.2f}× 1F1B   makespan {sim.makespan:g}"
        + (f"   {recompute_label(sim.schedule)}" if sim.schedule.recompute else "")
        + (f"\n{offload_label(sim.schedule)}" if sim.schedule.offload else "")
    )


def timeline_figure(sim: Simulation, *, memory_fraction: float | None = None,
                    title: str | None = None, width: float | None = None) -> Figure:
    """The timeline of ``sim`` with each rank's memory under it.

    ``memory_fraction`` draws the budget line at that multiple of 1F1B's peak; ``width`` fixes
    the figure's width in inches (default: sized so most microbatch numbers fit, 8..18 in).
    """
    need_matplotlib()
    if memory_fraction is not None and not memory_fraction > 0:
        raise SpecError(f"memory fraction must be > 0 (got {memory_fraction}); e.g. --memory 0.5")
    spec = sim.schedule.spec
    p = spec.num_ranks
    xmax = sim.makespan if sim.makespan > 0 else 1.0
    keys = _keys(sim)
    handles = _kind_handles(keys, spec.stages_per_rank)
    if sim.schedule.recompute:
        handles.append(recompute_handle())
    handles += move_handles() if sim.moves else []
    fig = new_figure(_width_in([sim], xmax, width), 1.0)
    top_h = max(p * _ROW, len(handles) * _LEGEND_ROW)
    mem_h = max(_MEMORY, min(p + 1, 10) * _LEGEND_ROW)
    rects = stack(fig, [top_h, mem_h] + [mem_h] * bool(sim.host_memory), gap=0.12, top=_TOP,
                  bottom=_BOTTOM, left=_LEFT, right=_RIGHT)
    ax = fig.add_axes(rects[0])
    ax_mem = fig.add_axes(rects[1], sharex=ax)
    ax.set_xlim(0, xmax)
    _draw_rows(ax, fig, rects[0], sim, xmax)
    ax.set_title(title if title is not None else _title(sim), loc="left", fontsize=9)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False, borderaxespad=0.0)
    _draw_memory(ax_mem, sim, xmax, memory_fraction)
    if sim.host_memory:  # offload: host memory under device memory
        ax_mem.tick_params(axis="x", labelbottom=False)
        ax_mem.set_xlabel("")
        draw_host_memory(fig.add_axes(rects[2], sharex=ax), sim, xmax, memory_scale(sim)[0],
                         _rank_colors(p))
    return fig


def _rank_colors(n: int) -> list[tuple[float, float, float, float]]:
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / (n - 1)) for i in range(n)]


def _draw_memory(ax: Axes, sim: Simulation, xmax: float, memory_fraction: float | None) -> None:
    scale, label = memory_scale(sim)
    if memory_fraction is not None and not sim.peak_fraction > 0:
        raise SpecError("a memory budget needs a cost model that holds memory (mem_f > 0)")
    p = len(sim.memory)
    colors = _rank_colors(p)
    # A legend entry per rank fits up to 10 ranks; past that, name 6 spread evenly (the
    # colours run dark to light in rank order, so the others read between them).
    named = set(range(p)) if p <= 10 else {round(i * (p - 1) / 5) for i in range(6)}
    top = 0.0
    for rank, trace in enumerate(sim.memory):
        xs, ys = _steps(trace, xmax, scale)
        peak = sim.peak_memory[rank] / scale
        top = max(top, peak)
        ax.step(xs, ys, where="post", color=colors[rank], linewidth=1.1,
                label=f"rank {rank}: peak {peak:.2f}" if rank in named else "_nolegend_")
        at = next((t for t, h in trace if h / scale >= peak), 0.0)  # first time at the peak
        ax.plot([at], [peak], marker="v", color=colors[rank], markersize=5, linestyle="none")
    if memory_fraction is not None:
        top = max(top, memory_fraction)
        over = " (exceeded)" if sim.peak_fraction > memory_fraction else ""
        ax.axhline(memory_fraction, color=BUDGET, linestyle="--", linewidth=1.0,
                   label=f"budget {memory_fraction:g}{over}")
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_ylabel(label, fontsize=8)
    ax.set_xlabel("time (cost-model units)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", linewidth=0.3, alpha=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
              borderaxespad=0.0)


def _max_over_ranks(sim: Simulation, scale: float) -> list[tuple[float, float]]:
    """The step function max over ranks of held memory, as (time, value) steps."""
    times = sorted({t for trace in sim.memory for t, _ in trace})
    index = [0] * len(sim.memory)
    out = []
    for t in times:
        held = 0.0
        for r, trace in enumerate(sim.memory):
            while index[r] + 1 < len(trace) and trace[index[r] + 1][0] <= t:
                index[r] += 1
            held = max(held, trace[index[r]][1])
        out.append((t, held / scale))
    return out


def compare_figure(sims: Sequence[Simulation], *, title: str | None = None,
                   memory_fraction: float | None = None, width: float | None = None) -> Figure:
    """Several schedules stacked on one shared time axis, their fullest rank's memory below.

    ``memory_fraction`` draws the budget line (a multiple of 1F1B's peak) in the memory panel.
    """
    need_matplotlib()
    if not sims:
        raise SpecError("compare needs at least one schedule")
    if memory_fraction is not None and not memory_fraction > 0:
        raise SpecError(f"memory fraction must be > 0 (got {memory_fraction}); e.g. --memory 0.5")
    xmax = max(s.makespan for s in sims) or 1.0
    chunks = max(s.schedule.spec.stages_per_rank for s in sims)
    keys = set().union(*(_keys(s) for s in sims))
    handles = _kind_handles(keys, chunks)
    fig = new_figure(_width_in(sims, xmax, width), 1.0)
    heights = [s.schedule.spec.num_ranks * _ROW for s in sims]
    heights[0] = max(heights[0], len(handles) * _LEGEND_ROW)
    heights.append(max(_MEMORY, min(len(sims), 10) * _LEGEND_ROW))
    gaps = [0.42] * (len(sims) - 1) + [0.15]
    rects = stack(fig, heights, gap=gaps, top=_TOP + (0.25 if title else 0.0), bottom=_BOTTOM,
                  left=_LEFT, right=_RIGHT)
    first = None
    for sim, rect in zip(sims, rects, strict=False):
        ax = fig.add_axes(rect, sharex=first)
        first = first or ax
        ax.set_xlim(0, xmax)
        _draw_rows(ax, fig, rect, sim, xmax)
        spec = sim.schedule.spec
        ax.set_title(
            f"{sim.schedule.name or 'schedule'}  (v={spec.stages_per_rank}):  bubble "
            f"{sim.bubble_rate:.1%}   peak {sim.peak_fraction:.2f}× 1F1B   "
            f"makespan {sim.makespan:g}", loc="left", fontsize=9)
    assert first is not None
    first.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                 frameon=False, borderaxespad=0.0)
    if title:
        fig.suptitle(title, x=_LEFT / fig.get_size_inches()[0], ha="left", fontsize=10)
    ax_mem = fig.add_axes(rects[-1], sharex=first)
    colors = _rank_colors(len(sims))
    top = 0.0
    for i, sim in enumerate(sims):
        scale, label = memory_scale(sim)
        steps = _max_over_ranks(sim, scale)
        xs, ys = _steps(steps, xmax, 1.0)
        top = max(top, max(ys))
        ax_mem.step(xs, ys, where="post", color=colors[i], linewidth=1.2,
                    label=f"{sim.schedule.name or i}: peak {sim.peak_fraction:.2f}")
    if memory_fraction is not None:
        top = max(top, memory_fraction)
        ax_mem.axhline(memory_fraction, color=BUDGET, linestyle="--", linewidth=1.0,
                       label=f"budget {memory_fraction:g}")
    ax_mem.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax_mem.set_ylabel("max memory\nover ranks (× 1F1B)", fontsize=8)
    ax_mem.set_xlabel("time (cost-model units)", fontsize=8)
    ax_mem.tick_params(labelsize=8)
    ax_mem.grid(axis="y", linewidth=0.3, alpha=0.6)
    for side in ("top", "right"):
        ax_mem.spines[side].set_visible(False)
    ax_mem.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
                  borderaxespad=0.0)
    return fig


def draw_timeline(sim: Simulation, path: str | Path, *, memory_fraction: float | None = None,
                  dpi: float = 100.0) -> Path:
    """Save :func:`timeline_figure` of ``sim`` to ``path`` (.png, .svg or .pdf)."""
    return save_figure(timeline_figure(sim, memory_fraction=memory_fraction), path, dpi=dpi)


def draw_compare(sims: Sequence[Simulation], path: str | Path, *,
                 memory_fraction: float | None = None, dpi: float = 100.0) -> Path:
    """Save :func:`compare_figure` of ``sims`` to ``path`` (.png, .svg or .pdf)."""
    return save_figure(compare_figure(sims, memory_fraction=memory_fraction), path, dpi=dpi)
