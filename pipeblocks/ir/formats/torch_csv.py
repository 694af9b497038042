"""PyTorch's compute-only schedule CSV, read and written.

``torch.distributed.pipelining`` saves a schedule with ``_dump_csv(path, format="compute_only")``:
one row per rank, one cell per action, ``<stage><letter><mb>``. Its letters are not ours:

=======  ==========  ===========================================
PyTorch  pipeblocks  pass
=======  ==========  ===========================================
``F``    ``F``       forward
``I``    ``B``       gradient w.r.t. the stage's inputs
``W``    ``W``       gradient w.r.t. the stage's weights
``B``    ``BW``      full backward (input and weight gradients)
=======  ==========  ===========================================

So PyTorch's ``B`` is our ``BW`` and our ``B`` is PyTorch's ``I``; this module is the only place
that translates. Reading also takes what PyTorch writes and we never do: empty cells (its idle
slots; skipped), spaces around cells, CRLF line ends, and overlapped cells such as
``(0F7;7B3)OVERLAP_F_B`` (its DualPipeV), read as their sub-actions in order. Communication and
FSDP actions (``SEND_F``, ``RECV_B``, ``UNSHARD``, ...) belong to its ``compute_comms`` format
and are refused.

The CSV has no header, so the spec comes from the cells unless the caller gives it:
``num_ranks`` = rows (a blank line is a rank with no actions), ``num_stages`` = largest stage
+ 1 (must be a multiple of the rows), ``num_microbatches`` = largest microbatch + 1, and the
placement is ``loop`` if every stage s sits on row s mod p, else ``v`` if stage s sits on row
s for s < p and on row 2p-1-s after. Both fit only when p = 1; ``loop`` wins then, so pass
``placement="v"`` to read a one-rank V schedule back exactly. Every contradiction is a
:class:`~pipeblocks.errors.FormatError` naming the line and column.

    >>> from pipeblocks.generators import generate
    >>> text = dumps(generate("1f1b", num_ranks=2, num_microbatches=2))
    >>> print(text, end="")
    0F0,0F1,0B0,0B1
    1F0,1B0,1F1,1B1
    >>> loads(text) == generate("1f1b", num_ranks=2, num_microbatches=2)
    True
    >>> loads(",0F0,0I0,0W0\\n").programs
    ((Action(stage=0, kind=<Pass.F: 'F'>, mb=0), Action(stage=0, kind=<Pass.B: 'B'>, mb=0), \
Action(stage=0, kind=<Pass.W: 'W'>, mb=0)),)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.formats._text import MAX_DIGITS
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

_log = logging.getLogger(__name__)

__all__ = ["dumps", "loads", "FROM_TORCH", "TO_TORCH"]

FROM_TORCH = {"F": Pass.F, "I": Pass.B, "W": Pass.W, "B": Pass.BW}
TO_TORCH = {kind: letter for letter, kind in FROM_TORCH.items()}

_CELL = re.compile(r"([0-9]+)([FIWB])([0-9]+)")
_OVERLAP = re.compile(r"\((.*)\)OVERLAP_F_B")
_COMMS = re.compile(r"[0-9]+(UNSHARD|RESHARD|REDUCE_GRAD|SEND_F|RECV_F|SEND_B|RECV_B)[0-9]*")
_BLANKS = " \t"
_CELL_HELP = (
    "is not <stage><letter><microbatch> with a PyTorch letter F, I, W or B "
    "(I is our B, B is our BW); write e.g. 0F3, 2I1, 2W1 or 1B0"
)

# A parsed cell: the action and its 1-based column on its line (the line is its row + 1).
_Cell = tuple[Action, int]

# A row of plain cells (what we and PyTorch's non-DualPipe schedules write) is read with one
# regex over the whole line; any other row goes through the cell-by-cell reader, which also
# finds columns for error messages.
_N = f"[0-9]{{1,{MAX_DIGITS}}}"
_PLAIN_ROW = re.compile(rf"{_N}[FIWB]{_N}(?:,{_N}[FIWB]{_N})*")


def dumps(schedule: Schedule) -> str:
    """One line per rank, cells joined by commas, PyTorch letters, no empty cells.

    The CSV has no place for the recompute or offload choice: they are dropped with a logged
    warning (the JSON format keeps them)."""
    if schedule.recompute:
        _log.warning("the torch CSV format has no recompute column: dropped the recompute of "
                     "stages %s; save as JSON to keep it", sorted(schedule.recompute))
    if schedule.offload is not None:
        _log.warning("the torch CSV format has no offload column: dropped the offload of %d "
                     "(stage, microbatch) pairs; save as JSON to keep it",
                     len(schedule.offload.pairs))
    return "".join(",".join(map(_text, prog)) + "\n" for prog in schedule.programs)


class _Rows:
    """The file's rows of actions, with the line texts to find a cell's column on demand."""

    def __init__(self, text: str, path: str) -> None:
        if not text.strip():
            raise FormatError("empty input: a torch-csv schedule has one row per rank",
                              path=path, line=1, column=1)
        lines = text.split("\n")
        if lines[-1] == "":  # the newline that ends the last row
            lines.pop()
        self.path = path
        self.lines = [line.removesuffix("\r") for line in lines]
        self.actions = [self._read(n, line) for n, line in enumerate(self.lines)]

    def _read(self, row: int, line: str) -> list[Action]:
        if _PLAIN_ROW.fullmatch(line):
            return [Action(int(s), FROM_TORCH[k], int(j)) for s, k, j in _CELL.findall(line)]
        return [a for a, _ in _row(line, row + 1, self.path)]

    def column(self, row: int, index: int) -> int:
        """The column of the row's ``index``-th action (errors only: re-reads the line)."""
        return _row(self.lines[row], row + 1, self.path)[index][1]

    def fail(self, row: int, index: int, message: str) -> FormatError:
        empty = [str(r + 1) for r, acts in enumerate(self.actions) if not acts]
        hint = ""
        if empty:
            shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
            hint = f" (line {shown} has no actions: every line is a rank, a blank one too)"
        return FormatError(message + hint, path=self.path, line=row + 1,
                           column=self.column(row, index))

    def first(self, test: Callable[[Action], bool]) -> tuple[int, int]:
        """(row, index) of the first action passing ``test`` (the caller knows there is one)."""
        return next((r, i) for r, acts in enumerate(self.actions)
                    for i, a in enumerate(acts) if test(a))


def loads(
    text: str,
    *,
    placement: Placement | str | None = None,
    stages_per_rank: int | None = None,
    num_microbatches: int | None = None,
    name: str = "",
    path: str = "",
) -> Schedule:
    """Read a compute-only CSV; the keyword arguments fix what the cells would imply.

    ``path`` only names the input in error messages.
    """
    if not isinstance(text, str):
        raise FormatError(f"expected CSV text, got {type(text).__name__}", path=path)
    if isinstance(placement, str):
        placement = _placement(placement)
    rows = _Rows(text.removeprefix("\ufeff"), path)  # a byte-order mark some editors write
    p = len(rows.actions)
    count = sum(map(len, rows.actions))
    if not count:
        raise FormatError(
            "no actions: a torch-csv schedule has one row per rank of cells like 0F3 "
            "(PyTorch letters F, I, W, B)", path=path, line=1, column=1,
        )
    largest_stage = max(a.stage for acts in rows.actions for a in acts)
    largest_mb = max(a.mb for acts in rows.actions for a in acts)
    # Each (stage, mb) needs its own F cell. Counts far beyond the cells (with slack for files
    # still being written) mean a corrupt number; trusting it would have the simulator and the
    # pictures work on a pipeline of that size.
    limit = 4 * count + 1024
    # stages: S = p * v, given or implied by the largest stage
    if stages_per_rank is None:
        if largest_stage >= limit:
            r, i = rows.first(lambda a: a.stage == largest_stage)
            raise rows.fail(r, i, f"stage {largest_stage} implies {largest_stage + 1} stages, "
                                  f"but the file holds only {count} cells; is the number "
                                  f"corrupt?")
        if (largest_stage + 1) % p:
            r, i = rows.first(lambda a: a.stage == largest_stage)
            raise rows.fail(r, i, f"stage {largest_stage} implies {largest_stage + 1} stages, "
                                  f"not a multiple of the {p} rows (one row per rank); fix the "
                                  f"cell or the row count")
        v = (largest_stage + 1) // p
    else:
        v = stages_per_rank
        if largest_stage >= p * v:
            r, i = rows.first(lambda a: a.stage >= p * v)
            raise rows.fail(r, i, f"stage {rows.actions[r][i].stage} does not exist: {p} rows "
                                  f"x stages_per_rank {v} give stages 0..{p * v - 1}")
    if num_microbatches is None:
        m = largest_mb + 1
        if p * v * m > limit:
            r, i = rows.first(lambda a: a.mb == largest_mb)
            raise rows.fail(r, i, f"microbatch {largest_mb} implies {m} microbatches x "
                                  f"{p * v} stages = {p * v * m} forward passes, but the file "
                                  f"holds only {count} cells; is the number corrupt?")
    else:
        m = num_microbatches
        if largest_mb >= m:
            r, i = rows.first(lambda a: a.mb >= m)
            raise rows.fail(r, i, f"microbatch {rows.actions[r][i].mb} does not exist: "
                                  f"num_microbatches={m} gives microbatches 0..{m - 1}")
    try:
        spec = _infer_placement(rows, p, m, v, placement)
    except SpecError as e:
        raise FormatError(f"the cells imply a spec that is not possible: {e}", path=path) from None
    return Schedule(spec, tuple(map(tuple, rows.actions)), name)


def _placement(text: str) -> Placement:
    try:
        return Placement(text)
    except ValueError:
        known = ", ".join(p.value for p in Placement)
        raise SpecError(f"unknown placement {text!r}; use one of: {known}") from None


def _row(line: str, lineno: int, path: str) -> list[_Cell]:
    out: list[_Cell] = []
    col = 1
    for raw in line.split(","):
        cell = raw.strip(_BLANKS)
        if cell:  # an empty cell is an idle slot in PyTorch's CSV
            start = col + len(raw) - len(raw.lstrip(_BLANKS))
            out.extend(_cell(cell, lineno, start, path))
        col += len(raw) + 1
    return out


def _cell(cell: str, line: int, col: int, path: str) -> list[_Cell]:
    match = _CELL.fullmatch(cell)
    if match:
        return [(_action(match, line, col, path), col)]
    match = _OVERLAP.fullmatch(cell)
    if match:
        out = []
        col_part = col + 1
        for part in match.group(1).split(";"):
            sub = part.strip(_BLANKS)
            start = col_part + len(part) - len(part.lstrip(_BLANKS))
            sub_match = _CELL.fullmatch(sub)
            if not sub_match:
                raise FormatError(f"{_show(sub)} inside the overlapped cell {_CELL_HELP}",
                                  path=path, line=line, column=start)
            out.append((_action(sub_match, line, start, path), start))
            col_part += len(part) + 1
        return out
    if _COMMS.fullmatch(cell):
        raise FormatError(
            f"{_show(cell)} is a communication action; a compute-only CSV holds only F, I, W and "
            f"B cells (dump it from PyTorch with _dump_csv(path, format='compute_only'))",
            path=path, line=line, column=col,
        )
    raise FormatError(f"cell {_show(cell)} {_CELL_HELP}", path=path, line=line, column=col)


def _action(match: re.Match[str], line: int, col: int, path: str) -> Action:
    for group, what in ((1, "stage"), (3, "microbatch")):
        if len(match.group(group)) > MAX_DIGITS:
            raise FormatError(f"{what} number {match.group(group)[:24]}... is too large "
                              f"(more than {MAX_DIGITS} digits)",
                              path=path, line=line, column=col + match.start(group))
    stage, letter, mb = match.groups()
    return Action(int(stage), FROM_TORCH[letter], int(mb))


def _text(a: Action) -> str:
    return f"{a.stage}{TO_TORCH[a.kind]}{a.mb}"


def _show(cell: str) -> str:
    return repr(cell if len(cell) <= 40 else cell[:40] + "...")


def _misplaced(spec: PipelineSpec, rows: _Rows) -> tuple[int, int] | None:
    """(row, index) of the first action not on the rank ``spec`` gives its stage."""
    for r, acts in enumerate(rows.actions):
        wrong = {s for s in {a.stage for a in acts} if spec.rank_of(s) != r}
        if wrong:
            return r, next(i for i, a in enumerate(acts) if a.stage in wrong)
    return None


def _infer_placement(
    rows: _Rows, p: int, m: int, v: int, placement: Placement | None
) -> PipelineSpec:
    """The spec of the rows: the given placement, checked, or the first that fits."""
    tries = [placement] if placement is not None else [Placement.LOOP, Placement.V]
    if placement is None and v != 2:
        tries = [Placement.LOOP]  # the V placement holds exactly two stages per rank
    misses = []
    for pl in tries:
        spec = PipelineSpec(p, m, v, pl)
        bad = _misplaced(spec, rows)
        if bad is None:
            return spec
        misses.append((spec, bad, rows.column(*bad)))
    # Report the placement that fitted the longest prefix of the file; name every miss.
    _, (r, i), _ = max(misses, key=lambda x: (x[1][0], x[2]))
    texts = []
    for s, (rr, ii), col in misses:
        a = rows.actions[rr][ii]
        texts.append(f"'{s.placement.value}' puts stage {a.stage} on rank {s.rank_of(a.stage)}, "
                     f"not on line {rr + 1}'s rank {rr}"
                     + (f" (column {col})" if len(misses) > 1 else ""))
    fix = ("move the cell to its rank's row" if placement is not None else
           "move the cell, or give the placement and stages per rank explicitly")
    raise rows.fail(r, i, f"cell {_show(_text(rows.actions[r][i]))} contradicts the placement: "
                          f"{'; '.join(texts)}; {fix}")
