"""The validator: is a schedule complete, well placed and executable?

Rules, checked in this order (each failure is a :class:`~pipeblocks.errors.ScheduleError` whose
``rule`` is the name below, with the rank, the position and a grid with the bad cell marked):

- ``range``: stage and microbatch indices exist in the spec.
- ``placement``: every action runs on the rank that holds its stage.
- ``duplicate``: no (stage, pass, microbatch) appears twice.
- ``split-or-fused``: per (stage, microbatch) either B and W, or BW; never both, never half.
- ``missing``: every (stage, microbatch) has its F and its backward.
- ``dependency``: a list execution of the programs finishes (shared/DESIGN.md section 2); the
  error names the first blocked rank, its next action and what that action waits for.

    >>> from pipeblocks.generators import generate
    >>> validate(generate("1f1b", num_ranks=4, num_microbatches=8))
"""

from __future__ import annotations

from pipeblocks.errors import ScheduleError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.ascii import error_grid
from pipeblocks.ir.deps import walk
from pipeblocks.ir.schedule import Schedule

__all__ = ["validate", "RULES"]

RULES = ("range", "placement", "duplicate", "split-or-fused", "missing", "dependency")


def _fail(schedule: Schedule, rule: str, rank: int | None, pos: int | None, text: str) -> None:
    where = f"rank {rank}, position {pos}: " if rank is not None else ""
    mark = (rank, pos) if rank is not None and pos is not None else None
    raise ScheduleError(
        f"invalid schedule ({rule}): {where}{text}",
        rule=rule,
        rank=rank,
        position=pos,
        grid=error_grid(schedule, mark),
    )


def validate(schedule: Schedule) -> None:
    """Raise :class:`ScheduleError` at the first broken rule; return None if the schedule is valid."""
    spec = schedule.spec
    num_stages, m = spec.num_stages, spec.num_microbatches
    seen: dict[Action, tuple[int, int]] = {}
    for rank, pos, a in schedule.actions():
        if not 0 <= a.stage < num_stages or not 0 <= a.mb < m:
            _fail(
                schedule, "range", rank, pos,
                f"{a} needs stage in 0..{num_stages - 1} and microbatch in 0..{m - 1} "
                f"({spec.describe()}); fix the indices or the spec",
            )
        home = spec.rank_of(a.stage)
        if home != rank:
            _fail(
                schedule, "placement", rank, pos,
                f"{a} runs on rank {rank} but placement '{spec.placement.value}' puts stage "
                f"{a.stage} on rank {home}; move it to rank {home}",
            )
        if a in seen:
            r0, p0 = seen[a]
            _fail(
                schedule, "duplicate", rank, pos,
                f"{a} appears twice (first at rank {r0}, position {p0}); remove one",
            )
        seen[a] = (rank, pos)
    for rank, pos, a in schedule.actions():
        if a.kind is Pass.BW:
            for other in (Pass.B, Pass.W):
                twin = Action(a.stage, other, a.mb)
                if twin in seen:
                    _fail(
                        schedule, "split-or-fused", *seen[twin],
                        f"{twin} and {a} both present; use either B and W, or BW alone",
                    )
        elif a.kind in (Pass.B, Pass.W):
            other = Pass.W if a.kind is Pass.B else Pass.B
            if Action(a.stage, other, a.mb) not in seen:
                _fail(
                    schedule, "split-or-fused", rank, pos,
                    f"{a} has no matching {a.stage}{other.value}{a.mb}; a split backward needs "
                    f"both B and W (or use BW)",
                )
    for s in range(num_stages):
        for j in range(m):
            if Action(s, Pass.F, j) not in seen:
                _fail(schedule, "missing", spec.rank_of(s), None,
                      f"stage {s} microbatch {j} has no F; add {s}F{j} to rank {spec.rank_of(s)}")
            if Action(s, Pass.B, j) not in seen and Action(s, Pass.BW, j) not in seen:
                _fail(schedule, "missing", spec.rank_of(s), None,
                      f"stage {s} microbatch {j} has no backward; add {s}BW{j} (or {s}B{j} and "
                      f"{s}W{j}) to rank {spec.rank_of(s)}")
    blocked = walk(schedule)
    if blocked:
        first = min(blocked, key=lambda b: (b.rank, b.position))
        heads = "; ".join(f"rank {b.rank} waits at {b.action} for {b.missing}" for b in blocked)
        _fail(
            schedule, "dependency", first.rank, first.position,
            f"{first.action} can never run: it needs {first.missing}, which is not done before it "
            f"in any executable order (blocked: {heads}); reorder the programs so that every pass "
            f"follows what it depends on",
        )


def is_valid(schedule: Schedule) -> bool:
    """True when :func:`validate` passes."""
    try:
        validate(schedule)
    except ScheduleError:
        return False
    return True
