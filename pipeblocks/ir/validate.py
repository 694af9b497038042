"""The validator: is a schedule complete, well placed and executable?

Rules, checked in this order (each failure is a :class:`~pipeblocks.errors.ScheduleError` whose
``rule`` is the name below, with the rank, the position and a grid with the bad cell marked):

- ``range``: stage and microbatch indices exist in the spec.
- ``placement``: every action runs on the rank that holds its stage.
- ``duplicate``: no (stage, pass, microbatch) appears twice.
- ``split-or-fused``: per (stage, microbatch) either B and W, or BW; never both, never half.
- ``missing``: every (stage, microbatch) has its F and its backward.
- ``dependency``: a list execution of the programs finishes (docs/design.md, "Passes and
  dependencies"); the error names a root of the deadlock (a blocked action whose dependency is
  queued behind a head, its own rank's first), what it waits for and where that sits, and
  every blocked rank.

The whole check is O(N log N) in the number of actions N, whatever the spec's sizes: a spec with
a huge ``num_microbatches`` and a short program fails ``missing`` at once instead of scanning
every (stage, microbatch). A valid schedule takes the bulk path (sets of packed indices, about
0.3 s for the 196,608 passes of p=64, m=512, v=2 on one core); only a broken one is scanned
action by action to name the first rule it breaks.

    >>> from pipeblocks.generators import generate
    >>> validate(generate("1f1b", num_ranks=4, num_microbatches=8))
    >>> from pipeblocks.ir import Action, Pass, PipelineSpec, Schedule
    >>> bad = Schedule(PipelineSpec(1, 1), ((Action(0, Pass.BW, 0), Action(0, Pass.F, 0)),))
    >>> validate(bad)
    Traceback (most recent call last):
    ...
    pipeblocks.errors.ScheduleError: invalid schedule (dependency): rank 0, position 0: 0BW0 can never run: it needs 0F0, ...
    rank 0 |[BW0] F0
"""

from __future__ import annotations

from pipeblocks.checks import expect
from pipeblocks.errors import ScheduleError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.ascii import error_grid
from pipeblocks.ir.bulk import no_gc
from pipeblocks.ir.deps import key, walk
from pipeblocks.ir.offload import check_offload
from pipeblocks.ir.schedule import Schedule

__all__ = ["validate", "is_valid", "RULES"]

RULES = ("range", "placement", "duplicate", "split-or-fused", "missing", "dependency")

# Inside the checks an action is the int (stage * m + mb) * 4 + code, code F=0 B=1 W=2 BW=3:
# hashing ints is done in C, hashing Action objects runs Python code (10x slower at p=64).
_CODE = {Pass.F: 0, Pass.B: 1, Pass.W: 2, Pass.BW: 3}


def _fail(schedule: Schedule, rule: str, rank: int | None, pos: int | None, text: str) -> None:
    where = "" if rank is None else f"rank {rank}: " if pos is None else \
        f"rank {rank}, position {pos}: "
    mark = (rank, pos) if rank is not None and pos is not None else None
    raise ScheduleError(
        f"invalid schedule ({rule}): {where}{text}",
        rule=rule,
        rank=rank,
        position=pos,
        grid=error_grid(schedule, mark),
    )


def _where(schedule: Schedule, action: Action) -> tuple[int, int]:
    """(rank, position) of the first occurrence of ``action`` (used on failure paths only)."""
    return next((r, i) for r, i, a in schedule.actions() if a == action)


def validate(schedule: Schedule) -> None:
    """Raise :class:`ScheduleError` at the first broken rule; return None if the schedule is valid."""
    expect("validate", "schedule", schedule, Schedule)
    with no_gc():  # a few objects per pass, no cycles: see pipeblocks.ir.bulk
        if not _complete(schedule):
            _check_each_action(schedule)  # raises the first broken rule, in program order
        _check_dependencies(schedule)
    check_offload(schedule)  # the offload pairs (ir/offload.py)


def _complete(schedule: Schedule) -> bool:
    """True when the rules range .. missing all hold, checked in bulk (sets, comprehensions).

    False means at least one of them is broken; the ordered scan then says which and where.
    """
    spec = schedule.spec
    m, total = spec.num_microbatches, spec.num_stages * spec.num_microbatches
    if 2 * total > schedule.num_actions:  # each (stage, mb) needs an F and a backward
        return False
    keys: dict[Pass, list[int]] = {kind: [] for kind in Pass}
    for rank, prog in enumerate(schedule.programs):
        if not prog:
            continue
        if not {a.stage for a in prog} <= set(spec.stages_of(rank)):
            return False  # a stage out of range or on the wrong rank
        if min(a.mb for a in prog) < 0 or max(a.mb for a in prog) >= m:
            return False
        for kind, out in keys.items():
            out += [a.stage * m + a.mb for a in prog if a.kind is kind]
    f, b, w, bw = (set(keys[k]) for k in (Pass.F, Pass.B, Pass.W, Pass.BW))
    return (
        len(f) == len(keys[Pass.F]) == total  # every F once
        and len(b) == len(keys[Pass.B]) and len(w) == len(keys[Pass.W])
        and len(bw) == len(keys[Pass.BW])  # no duplicates
        and b == w and not b & bw  # split pairs whole, never beside a fused one
        and len(b) + len(bw) == total  # every backward
    )


def _check_each_action(schedule: Schedule) -> None:
    """The rules range .. missing, action by action, raising at the first one broken."""
    spec = schedule.spec
    num_stages, m = spec.num_stages, spec.num_microbatches
    home: dict[int, int] = {}
    seen: set[int] = set()
    counts = [0, 0, 0, 0]
    for rank, prog in enumerate(schedule.programs):
        for pos, a in enumerate(prog):
            s, j = a.stage, a.mb
            if not (0 <= s < num_stages and 0 <= j < m):
                _fail(
                    schedule, "range", rank, pos,
                    f"{a} needs stage in 0..{num_stages - 1} and microbatch in 0..{m - 1} "
                    f"({spec.describe()}); fix the indices or the spec",
                )
            h = home.get(s)
            if h is None:
                h = home[s] = spec.rank_of(s)
            if h != rank:
                _fail(
                    schedule, "placement", rank, pos,
                    f"{a} runs on rank {rank} but placement '{spec.placement.value}' puts stage "
                    f"{s} on rank {h}; move it to rank {h}",
                )
            code = _CODE[a.kind]
            k = (s * m + j) * 4 + code
            if k in seen:
                r0, p0 = _where(schedule, a)
                _fail(
                    schedule, "duplicate", rank, pos,
                    f"{a} appears twice (first at rank {r0}, position {p0}); remove one",
                )
            seen.add(k)
            counts[code] += 1
    if counts[1] or counts[2]:  # without split passes no pair can be half or doubled
        _check_split_or_fused(schedule, seen)
    _check_missing(schedule, seen, counts)


def _check_dependencies(schedule: Schedule) -> None:
    """A list execution finishes; else name a root of the deadlock.

    Every blocked rank waits at its head for a dependency. Some wait for another blocked
    head: they are victims. At least one waits for a pass queued *behind* a head, since
    dependencies never form a cycle: that is a root, a wait a reorder must fix. A root whose
    dependency is later in its own program is wrong whatever the other ranks do, so the error
    names such a root if there is one, else a root across ranks (the lowest rank first).
    """
    blocked = walk(schedule)
    if not blocked:
        return
    wanted = {b.missing for b in blocked}
    where: dict[Action, tuple[int, int]] = {}
    for r, i, a in schedule.actions():
        k = key(a)
        if k in wanted:
            where[k] = (r, i)
    head = {b.rank: b.position for b in blocked}
    own = [b for b in blocked if where[b.missing][0] == b.rank]
    roots = [b for b in blocked if head.get(where[b.missing][0]) != where[b.missing][1]]
    first = min(own or roots or blocked, key=lambda b: (b.rank, b.position))
    r, i = where[first.missing]
    need = schedule.programs[r][i]
    if r == first.rank:
        why = f"which comes later in rank {r}'s own program (position {i})"
    else:
        why = (f"which rank {r} reaches only at position {i}, behind its blocked head "
               f"{schedule.programs[r][head[r]]} (position {head[r]})")
    heads = "; ".join(
        f"rank {b.rank} at {b.action} waits for "
        f"{schedule.programs[where[b.missing][0]][where[b.missing][1]]}"
        for b in sorted(blocked, key=lambda b: b.rank)
    )
    _fail(
        schedule, "dependency", first.rank, first.position,
        f"{first.action} can never run: it needs {need}, {why} (blocked: {heads}); reorder the "
        f"programs so that every pass comes after what it depends on",
    )


def _check_split_or_fused(schedule: Schedule, seen: set[int]) -> None:
    """Per (stage, mb): B and W together, or BW alone. Reports the first bad action in order."""
    m = schedule.spec.num_microbatches
    for rank, prog in enumerate(schedule.programs):
        for pos, a in enumerate(prog):
            if a.kind is Pass.F:
                continue
            base = (a.stage * m + a.mb) * 4
            if a.kind is Pass.BW:
                for other in (Pass.B, Pass.W):
                    if base + _CODE[other] in seen:
                        twin = Action(a.stage, other, a.mb)
                        _fail(
                            schedule, "split-or-fused", *_where(schedule, twin),
                            f"{twin} and {a} both present; use either B and W, or BW alone",
                        )
            else:
                other = Pass.W if a.kind is Pass.B else Pass.B
                if base + _CODE[other] not in seen:
                    _fail(
                        schedule, "split-or-fused", rank, pos,
                        f"{a} has no matching {a.stage}{other.value}{a.mb}; a split backward "
                        f"needs both B and W (or use BW)",
                    )


def _check_missing(schedule: Schedule, seen: set[int], counts: list[int]) -> None:
    """Every (stage, mb) has an F and a backward; reports the first gap in (stage, mb) order."""
    spec = schedule.spec
    total = spec.num_stages * spec.num_microbatches
    # After the duplicate and split-or-fused rules each count is of distinct (stage, mb) pairs.
    if counts[0] == total and counts[1] + counts[3] == total:
        return
    # The first pair that lacks something is the first gap in the sorted complete pairs
    # (O(N log N): never a scan over all stage x microbatch pairs, which may be huge).
    complete = sorted(
        k >> 2 for k in seen if k & 3 == 0 and ((k | 1) in seen or (k | 3) in seen)
    )
    q = next((i for i, c in enumerate(complete) if c != i), len(complete))
    s, j = divmod(q, spec.num_microbatches)
    r = spec.rank_of(s)
    if q * 4 not in seen:
        _fail(schedule, "missing", r, None,
              f"stage {s} microbatch {j} has no F; add {s}F{j} to rank {r}")
    _fail(
        schedule, "missing", r, None,
        f"stage {s} microbatch {j} has no backward; add {s}BW{j} (or {s}B{j} and {s}W{j}) "
        f"to rank {r}",
    )


def is_valid(schedule: Schedule) -> bool:
    """True when :func:`validate` passes (an argument that is not a Schedule still raises)."""
    try:
        validate(schedule)
    except ScheduleError:
        return False
    return True
