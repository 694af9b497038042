"""Dependencies between passes and the one list execution the validator and simulator share.

The rules (docs/design.md, "Passes and dependencies"):

- F(s, j) after F(s-1, j).
- B(s, j) or BW(s, j) after F(s, j) and after the input-gradient pass (B or BW) of (s+1, j);
  the last stage's B needs only its F (the loss is computed there).
- W(s, j) after B(s, j).

Within a rank passes run in program order, one at a time. :func:`walk` list-executes the
programs: it advances every rank whose next action has all its dependencies done, in O(actions).
The validator asks it whether the schedule can finish; the simulator hands it a :class:`Timing`
(pass durations and transfer times) and it also says when every pass starts and ends: a pass
starts when its rank is free and every dependency has ended, plus the transfer when that
dependency ran on another rank.

    >>> from pipeblocks.ir import Action, Pass
    >>> needs(Action(2, Pass.B, 0), num_stages=4)
    (Action(stage=2, kind=<Pass.F: 'F'>, mb=0), Action(stage=3, kind=<Pass.B: 'B'>, mb=0))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule

__all__ = ["needs", "key", "walk", "Blocked", "Timing"]


def key(action: Action) -> Action:
    """The action's dependency key: B and BW both count as "the input-gradient pass" (B)."""
    if action.kind is Pass.BW:
        return Action(action.stage, Pass.B, action.mb)
    return action


def needs(action: Action, num_stages: int) -> tuple[Action, ...]:
    """Dependency keys of ``action``; a key with kind B means "the B or BW of that stage"."""
    s, j = action.stage, action.mb
    if action.kind is Pass.F:
        return (Action(s - 1, Pass.F, j),) if s > 0 else ()
    if action.kind is Pass.W:
        return (Action(s, Pass.B, j),)
    if s == num_stages - 1:
        return (Action(s, Pass.F, j),)
    return (Action(s, Pass.F, j), Action(s + 1, Pass.B, j))


@dataclass(frozen=True, slots=True)
class Blocked:
    """A rank that could not go on: its next action and the dependency it waits for."""

    rank: int
    position: int
    action: Action
    missing: Action
    unmet: tuple[Action, ...] = field(default=(), compare=False)
    """Every dependency of ``action`` that had not run, ``missing`` first."""


@dataclass(slots=True)
class Timing:
    """The timing hook of :func:`walk`: per-stage times in, each pass's start and end out.

    ``durations[code][stage]`` with code 0 = F, 1 = B, 2 = W, 3 = BW; ``comm_act[s]``: the
    activation transfer from stage s-1 into s, ``comm_grad[s]``: the gradient transfer from
    s+1 into s (0 where both stages are on one rank). :func:`walk` fills ``starts[r]`` and
    ``ends[r]`` with the times of ``programs[r]``, position by position, as far as it ran.
    """

    durations: Sequence[Sequence[float]]
    comm_act: Sequence[float]
    comm_grad: Sequence[float]
    starts: list[list[float]] = field(default_factory=list)
    ends: list[list[float]] = field(default_factory=list)


Visit = Callable[[int, int, Action, tuple[tuple[int, Action], ...]], None]

# Why the loops below do not call needs(): hashing an Action runs Python code (dataclass and
# enum __hash__), which made the validator spend seconds on p=64, m=512. The general loop keys
# dependencies by plain tuples (0 = F done or 1 = input gradient done, stage, mb), hashed in C
# and exact for any index. When no visit is asked for and every index lies in the spec, the
# packed loop keys them by q = stage * m + mb into two bytearrays, about twice as fast again.
_F, _B, _W = Pass.F, Pass.B, Pass.W


def walk(
    schedule: Schedule, visit: Visit | None = None, *, timing: Timing | None = None
) -> list[Blocked]:
    """List-execute ``schedule``; return the ranks left blocked (empty when it finishes).

    ``visit(rank, position, action, deps)`` is called once per action in an order that respects
    every dependency; ``deps`` holds ``(rank, key)`` of each dependency that ran, in the order
    :func:`needs` gives. The caller must have checked that every key is produced at most once
    (the validator does). Each rank runs as far as it can before the next; the final positions
    do not depend on that order (running a pass never stops another from running), nor do the
    times: ``timing`` (not with ``visit``) gets every pass's start and end, and an index
    outside the spec raises :class:`~pipeblocks.errors.SpecError`.
    """
    if timing is not None:
        if visit is not None:
            raise SpecError("walk takes a visit or a timing, not both; make two walks")
        pos = _advance_timed(schedule, timing)
    elif visit is None and _packable(schedule):
        pos = _advance_packed(schedule)
    else:
        pos = _advance(schedule, visit)
    return _blocked(schedule, pos)


def _packable(schedule: Schedule) -> bool:
    """Every index lies in the spec, and the spec is not vastly larger than the programs (the
    packed state takes 2 bytes per (stage, microbatch))."""
    num_stages, m = schedule.spec.num_stages, schedule.spec.num_microbatches
    if num_stages * m > 8 * schedule.num_actions + 4096:
        return False
    for prog in schedule.programs:
        if prog and not (
            0 <= min(a.stage for a in prog) and max(a.stage for a in prog) < num_stages
            and 0 <= min(a.mb for a in prog) and max(a.mb for a in prog) < m
        ):
            return False
    return True


def _advance(schedule: Schedule, visit: Visit | None) -> list[int]:
    """The general list execution; returns each rank's final position."""
    last = schedule.spec.num_stages - 1
    programs = schedule.programs
    done: dict[tuple[int, int, int], int] = {}  # dependency key -> rank that ran it
    waiting: dict[tuple[int, int, int], list[int]] = {}
    pos = [0] * len(programs)
    ready = list(range(len(programs)))
    while ready:
        rank = ready.pop()
        prog = programs[rank]
        i, n = pos[rank], len(prog)
        while i < n:
            action = prog[i]
            s, j, kind = action.stage, action.mb, action.kind
            if kind is _F:
                first = (0, s - 1, j) if s > 0 else None
                second = None
                mine = (0, s, j)
            elif kind is _W:
                first, second, mine = (1, s, j), None, (2, s, j)
            else:  # B or BW: the input-gradient pass
                first = (0, s, j)
                second = (1, s + 1, j) if s != last else None
                mine = (1, s, j)
            missing = None
            if first is not None and first not in done:
                missing = first
            elif second is not None and second not in done:
                missing = second
            if missing is not None:
                waiting.setdefault(missing, []).append(rank)
                break
            if visit is not None:
                deps = tuple((done[k], _action(k)) for k in (first, second) if k is not None)
                visit(rank, i, action, deps)
            done[mine] = rank
            i += 1
            woken = waiting.pop(mine, None)
            if woken:
                ready.extend(woken)
        pos[rank] = i
    return pos


def _advance_packed(schedule: Schedule) -> list[int]:
    """The same execution for in-range schedules, state in bytearrays (see the note above)."""
    m = schedule.spec.num_microbatches
    last = schedule.spec.num_stages - 1
    programs = schedule.programs
    f_done = bytearray(schedule.spec.num_stages * m)  # the F of q = stage * m + mb ran
    b_done = bytearray(len(f_done))  # the B or BW of (stage, mb) ran
    waiting: dict[int, list[int]] = {}  # q: waits for F(q); ~q: for the backward of q
    pos = [0] * len(programs)
    ready = list(range(len(programs)))
    while ready:
        rank = ready.pop()
        prog = programs[rank]
        i, n = pos[rank], len(prog)
        while i < n:
            a = prog[i]
            s, kind = a.stage, a.kind
            q = s * m + a.mb
            if kind is _F:
                if s and not f_done[q - m]:
                    waiting.setdefault(q - m, []).append(rank)
                    break
                f_done[q] = 1
                woken = waiting.pop(q, None)
            elif kind is _W:
                if not b_done[q]:
                    waiting.setdefault(~q, []).append(rank)
                    break
                woken = None
            else:  # B or BW
                if not f_done[q]:
                    waiting.setdefault(q, []).append(rank)
                    break
                if s != last and not b_done[q + m]:
                    waiting.setdefault(~(q + m), []).append(rank)
                    break
                b_done[q] = 1
                woken = waiting.pop(~q, None)
            i += 1
            if woken:
                ready.extend(woken)
        pos[rank] = i
    return pos


def _advance_timed(schedule: Schedule, timing: Timing) -> list[int]:
    """The packed execution with times: ``end[i]`` is the end of the pass with index
    i = (code * S + stage) * m + mb (code 0 = F, 1 = B or BW, 2 = W), -1 while it has not run.
    Written out flat, like the loop above: it runs once per pass of a million-pass schedule."""
    spec = schedule.spec
    p, num_stages, m = spec.num_ranks, spec.num_stages, spec.num_microbatches
    d_f, d_b, d_w, d_bw = timing.durations
    comm_act, comm_grad = timing.comm_act, timing.comm_grad
    sm = num_stages * m
    end = [-1.0] * (3 * sm)
    waiting: dict[int, list[int]] = {}
    pos = [0] * p
    free = [0.0] * p
    starts: list[list[float]] = [[] for _ in range(p)]
    ends: list[list[float]] = [[] for _ in range(p)]
    timing.starts, timing.ends = starts, ends
    programs = schedule.programs
    ready = list(range(p))
    last = num_stages - 1
    kind_f, kind_b, kind_w = _F, _B, _W  # locals: read once per pass
    while ready:
        r = ready.pop()
        prog = programs[r]
        i, t_free, n = pos[r], free[r], len(prog)
        st, en = starts[r], ends[r]
        while i < n:
            a = prog[i]
            s, j, kind = a.stage, a.mb, a.kind
            if not (0 <= s < num_stages and 0 <= j < m):
                raise SpecError(f"rank {r} position {i}: {a} is out of range ({spec.describe()})")
            start = t_free
            if kind is kind_f:
                if s > 0:
                    e = end[(s - 1) * m + j]
                    if e < 0:
                        waiting.setdefault((s - 1) * m + j, []).append(r)
                        break
                    e += comm_act[s]
                    if e > start:
                        start = e
                k = s * m + j
                fin = start + d_f[s]
            elif kind is kind_w:
                e = end[sm + s * m + j]
                if e < 0:
                    waiting.setdefault(sm + s * m + j, []).append(r)
                    break
                if e > start:
                    start = e
                k = 2 * sm + s * m + j
                fin = start + d_w[s]
            else:  # B or BW
                e = end[s * m + j]
                if e < 0:
                    waiting.setdefault(s * m + j, []).append(r)
                    break
                if e > start:
                    start = e
                if s < last:
                    e = end[sm + (s + 1) * m + j]
                    if e < 0:
                        waiting.setdefault(sm + (s + 1) * m + j, []).append(r)
                        break
                    e += comm_grad[s]
                    if e > start:
                        start = e
                k = sm + s * m + j
                fin = start + (d_b[s] if kind is kind_b else d_bw[s])
            end[k] = fin
            st.append(start)
            en.append(fin)
            t_free = fin
            i += 1
            woken = waiting.pop(k, None)
            if woken:
                ready.extend(woken)
        pos[r], free[r] = i, t_free
    return pos


def _blocked(schedule: Schedule, pos: list[int]) -> list[Blocked]:
    """Each rank that stopped early, its head and the first dependency that head lacks."""
    programs = schedule.programs
    if all(p == len(prog) for p, prog in zip(pos, programs, strict=True)):
        return []
    done = {_tuple(key(a)) for rank, prog in enumerate(programs) for a in prog[: pos[rank]]}
    num_stages = schedule.spec.num_stages
    blocked = []
    for rank, prog in enumerate(programs):
        if pos[rank] < len(prog):
            action = prog[pos[rank]]
            unmet = tuple(k for k in needs(action, num_stages) if _tuple(k) not in done)
            blocked.append(Blocked(rank, pos[rank], action, unmet[0], unmet))
    return blocked


def _action(k: tuple[int, int, int]) -> Action:
    return Action(k[1], _F if k[0] == 0 else _B, k[2])


def _tuple(a: Action) -> tuple[int, int, int]:
    return (0 if a.kind is _F else 1 if a.kind is not _W else 2, a.stage, a.mb)
