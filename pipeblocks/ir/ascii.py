"""ASCII grids of schedules, for people and for error messages.

One row per rank, one column per program position (not a time axis: see
:mod:`pipeblocks.visual` for timed pictures). :func:`rows_text` lays out any such rows of
cells; the building blocks' patterns and slot layouts use it too. Where a rank holds one stage the cell is
``<letter><mb>``, else ``<stage><letter><mb>``; the backward of a recomputed stage
(:mod:`pipeblocks.ir.recompute`) ends in ``*``. A marked cell is shown as ``[cell]``.

    >>> from pipeblocks.ir import Action, Pass, PipelineSpec, Schedule
    >>> spec = PipelineSpec(num_ranks=2, num_microbatches=2)
    >>> progs = ((Action(0, Pass.F, 0), Action(0, Pass.F, 1)), (Action(1, Pass.F, 0),))
    >>> print(grid(Schedule(spec, progs), mark=(1, 0)))
    rank 0 | F0 F1
    rank 1 |[F0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeblocks.ir.schedule import Schedule

__all__ = ["grid", "rows_text"]

_MAX_COLUMNS = 64


def grid(schedule: Schedule, mark: tuple[int, int] | None = None, max_columns: int = 0) -> str:
    """Render ``schedule``; ``mark=(rank, position)`` brackets one cell.

    ``max_columns`` > 0 shows only a window of that many positions around the mark (or the
    start), so error messages stay readable for long programs.
    """
    with_stage = schedule.spec.stages_per_rank > 1
    programs = schedule.programs
    lo, hi = 0, max((len(p) for p in programs), default=0)
    if max_columns > 0 and hi > max_columns:
        center = mark[1] if mark else 0
        lo = max(0, min(center - max_columns // 2, hi - max_columns))
        hi = lo + max_columns
    # Only the shown window is formatted: error grids of p=64, m=512 schedules stay cheap.
    cells = [[a.short(with_stage) for a in prog[lo:hi]] for prog in programs]
    if schedule.recompute:  # a recomputed stage's backward re-runs its forward: marked '*'
        rc = schedule.recompute
        cells = [[c + "*" if a.stage in rc and a.kind.frees_input_grad else c
                  for c, a in zip(row, prog[lo:hi], strict=True)]
                 for row, prog in zip(cells, programs, strict=True)]
    prefix = "... " if lo > 0 else ""
    ends = [(prefix, " ..." if hi < len(prog) else "") for prog in programs]
    return rows_text(cells, mark, first=lo, ends=ends)


def rows_text(
    cells: Sequence[Sequence[str]],
    mark: tuple[int, int] | None = None,
    *,
    first: int = 0,
    ends: Sequence[tuple[str, str]] = (),
) -> str:
    """One line ``rank r |`` per row, each cell right-aligned to the widest and after a space;
    ``mark=(row, column)`` (columns counted from ``first``) brackets one cell instead;
    ``ends[r]`` is text put before and after row r's cells (an elided window's ``...``)."""
    width = max((len(c) for row in cells for c in row), default=1)
    label_w = len(f"rank {len(cells) - 1}")
    lines = []
    for rank, row in enumerate(cells):
        parts = []
        after_mark = False
        for col, cell in enumerate(row, first):
            text = cell.rjust(width)
            if mark == (rank, col):
                parts.append(f"[{text}]")
                after_mark = True
            else:
                parts.append(text if after_mark else f" {text}")
                after_mark = False
        before, after = ends[rank] if ends else ("", "")
        line = f"{f'rank {rank}'.ljust(label_w)} |{before}{''.join(parts)}{after}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def error_grid(schedule: Schedule, mark: tuple[int, int] | None) -> str:
    """The grid used inside :class:`~pipeblocks.errors.ScheduleError` (a window of columns)."""
    return grid(schedule, mark=mark, max_columns=_MAX_COLUMNS)
