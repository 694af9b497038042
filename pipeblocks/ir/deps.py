"""Dependencies between passes and the list execution every checker and the simulator share.

The rules (shared/DESIGN.md section 2):

- F(s, j) after F(s-1, j).
- B(s, j) or BW(s, j) after F(s, j) and after the input-gradient pass (B or BW) of (s+1, j);
  the last stage's B needs only its F (the loss is computed there).
- W(s, j) after B(s, j).

Within a rank passes run in program order, one at a time. :func:`walk` list-executes the
programs: it advances every rank whose next action has all its dependencies done, in O(actions).
It does not need times, so the validator (is the schedule feasible?) and the simulator (when
does each pass run?) use the same traversal.

    >>> from pipeblocks.ir import Action, Pass
    >>> needs(Action(2, Pass.B, 0), num_stages=4)
    (Action(stage=2, kind=<Pass.F: 'F'>, mb=0), Action(stage=3, kind=<Pass.B: 'B'>, mb=0))
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule

__all__ = ["needs", "key", "walk", "Blocked"]


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


Visit = Callable[[int, int, Action, tuple[tuple[int, Action], ...]], None]


def walk(schedule: Schedule, visit: Visit | None = None) -> list[Blocked]:
    """List-execute ``schedule``; return the ranks left blocked (empty when it finishes).

    ``visit(rank, position, action, deps)`` is called once per action in an order that respects
    every dependency; ``deps`` holds ``(rank, action)`` of each dependency that ran. The caller
    must have checked that every key is produced at most once (the validator does).
    """
    num_stages = schedule.spec.num_stages
    programs = schedule.programs
    done: dict[Action, int] = {}  # dependency key -> rank that ran it
    waiting: dict[Action, list[int]] = defaultdict(list)
    pos = [0] * len(programs)
    ready = list(range(len(programs)))
    while ready:
        rank = ready.pop()
        prog = programs[rank]
        while pos[rank] < len(prog):
            action = prog[pos[rank]]
            deps = []
            missing = None
            for need in needs(action, num_stages):
                where = done.get(need)
                if where is None:
                    missing = need
                    break
                deps.append((where, need))
            if missing is not None:
                waiting[missing].append(rank)
                break
            if visit is not None:
                visit(rank, pos[rank], action, tuple(deps))
            k = key(action)
            done[k] = rank
            pos[rank] += 1
            woken = waiting.pop(k, None)
            if woken:
                ready.extend(woken)
    blocked = []
    for rank, prog in enumerate(programs):
        if pos[rank] < len(prog):
            action = prog[pos[rank]]
            missing = next(n for n in needs(action, num_stages) if n not in done)
            blocked.append(Blocked(rank, pos[rank], action, missing))
    return blocked
