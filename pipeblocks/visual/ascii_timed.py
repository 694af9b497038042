"""The ASCII timeline: a simulated schedule on a true time axis, scaled to a terminal's width.

Unlike :func:`pipeblocks.ir.grid` (one column per program position), each column here is the
same slice of time, so idle time shows as ``.``. A pass fills the cells its start and end round
to (at least one), each cell holding its kind's letter:

- ``F`` forward, ``B`` input gradient, ``W`` weight gradient, ``X`` fused backward (BW);
- upper case for even chunks (local stage 0, 2, ...), lower case for odd ones, so a V's
  chunk 1 reads ``f``/``b``/``w``/``x``;
- where every pass is wide enough, its microbatch number follows its first letter (``F12FF``),
  so a letter followed by a digit starts a pass; otherwise letters only.

Every line, header included, fits in ``width`` characters (default: the terminal's width).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> print(timed_ascii(simulate(generate("1f1b", 2, 3)), width=34))
    # 1f1b  p=2 m=3 v=1 placement=loop
    # makespan 12  bubble 25.0%  peak
    # 1.00x 1F1B  cell = 0.46 units
    rank 0 |F0F1.....X0XXF2X1XXX..X2XX
    rank 1 |..F0X0XXXF1X1XXF2X2XXX....
    # F forward, B input grad, W
    # weight grad, X fused backward;
    # lower case: odd chunk; '.' idle
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.sim.engine import Simulation, Span

__all__ = ["LETTERS", "IDLE_CELL", "timed_ascii", "legend"]

LETTERS: dict[Pass, str] = {Pass.F: "F", Pass.B: "B", Pass.W: "W", Pass.BW: "X"}
"""The cell letter of each pass kind (upper case: even chunk; lower case: odd chunk)."""

IDLE_CELL = "."
"""The cell of an idle slice of time."""

_MIN_CELLS = 8
_MAX_WIDTH = 100_000  # characters per line


def legend() -> str:
    """One line explaining the cells."""
    return ("F forward, B input grad, W weight grad, X fused backward; lower case: odd chunk; "
            f"'{IDLE_CELL}' idle")


def _place(spans: Sequence[Span], chunk_of: dict[int, int], dt: float,
           cols: int) -> list[tuple[int, int, str, str]]:
    """``(first cell, end cell, letter, label)`` of each pass of one rank that fits in ``cols``."""
    out = []
    cursor = 0  # first free cell: passes on a rank never overlap, nor do their cells
    for s in spans:
        a = max(cursor, round(s.start / dt))
        b = min(cols, max(round(s.end / dt), a + 1))
        if a >= cols:
            break
        letter = LETTERS[s.action.kind]
        if chunk_of[s.action.stage] % 2:
            letter = letter.lower()
        out.append((a, b, letter, f"{letter}{s.action.mb}"))
        cursor = b
    return out


def _render(placed: list[tuple[int, int, str, str]], cols: int, labels: bool) -> str:
    row = [IDLE_CELL] * cols
    for a, b, letter, label in placed:
        text = label if labels else letter
        row[a:b] = text + letter * (b - a - len(text))
    return "".join(row)


def timed_ascii(sim: Simulation, width: int | None = None, *, header: bool = True) -> str:
    """Render ``sim`` in at most ``width`` columns (default: the terminal's width).

    ``header`` adds the metrics above the rows and the legend under them (``# `` lines).
    """
    spec = sim.schedule.spec
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    prefix_w = len(f"rank {spec.num_ranks - 1} |")
    if isinstance(width, bool) or not isinstance(width, int) or width < prefix_w + _MIN_CELLS:
        raise SpecError(
            f"timed ASCII width must be an integer >= {prefix_w + _MIN_CELLS} for "
            f"{spec.num_ranks} ranks (got {width!r}); use --width {prefix_w + _MIN_CELLS} or more"
        )
    if width > _MAX_WIDTH:  # each row is a list of width cells: 10**20 would exhaust memory
        raise SpecError(f"timed ASCII width must be at most {_MAX_WIDTH} (got {width}); use a "
                        f"smaller --width")
    cols = width - prefix_w
    makespan = sim.makespan if sim.makespan > 0 else 1.0
    dt = makespan / cols
    chunk_of = {s: spec.local_of(s) for s in range(spec.num_stages)}
    lines = []
    if header:
        text = (f"{sim.schedule.name or 'schedule'}  {spec.describe()}  makespan "
                f"{sim.makespan:g}  bubble {sim.bubble_rate:.1%}  peak "
                f"{sim.peak_fraction:.2f}x 1F1B  cell = {dt:.2g} units")
        lines += [f"# {line}" for line in textwrap.wrap(text, width - 2)]
    placed = [_place(spans, chunk_of, dt, cols) for spans in sim.spans]
    # Numbers only if every pass has room for its own: then a letter followed by a digit always
    # starts a pass, and adjacent passes of one kind stay apart.
    labels = all(b - a >= len(label) for row in placed for a, b, _, label in row)
    for rank, row in enumerate(placed):
        name = f"rank {rank}".ljust(prefix_w - 1) + "|"
        lines.append(name + _render(row, cols, labels))
    if header:
        lines += [f"# {line}" for line in textwrap.wrap(legend(), width - 2)]
    return "\n".join(lines)
