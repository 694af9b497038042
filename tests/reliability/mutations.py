"""Random edits of schedules and of lowered programs, and oracles that say what each breaks.

Shared by test_mutations.py and docs/make_reliability.py. Unlike the single-rule mutations of
tests/ir/test_validate.py, these edits come in sequences and may cancel, combine or leave the
schedule valid; the oracles decide, written from docs/design.md without the code they check:

- :func:`rule_oracle`: the rules a schedule breaks (or None), for :func:`pipeblocks.ir.validate`.
- :func:`fifo_run`: whether lowered programs run on a strict point-to-point transport, for
  :func:`pipeblocks.sim.deadlock.check`.

    >>> import random
    >>> from pipeblocks.generators import generate
    >>> s = generate("1f1b", 2, 2)
    >>> rule_oracle(s) is None, rule_oracle(mutate_schedule(random.Random(0), s, 1, ["drop"]))
    (True, {'missing'})
"""

from __future__ import annotations

import functools
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, get, names
from pipeblocks.ir import Action, Pass, Schedule
from pipeblocks.ir.lowering import Comm, CommOp, LoweredSchedule, Op, _incoming, _outgoing

__all__ = ["cases", "MUTATIONS", "LOWERED_MUTATIONS", "RULE_GROUPS", "mutate_schedule", "rule_oracle",
           "mutate_lowered", "fifo_run"]

# --- validator mutations ----------------------------------------------------------------------

MUTATIONS = ("drop", "duplicate", "move-rank", "renumber-mb", "renumber-stage", "change-kind",
             "swap", "reverse-rank", "shuffle-rank", "exchange-programs", "out-of-range")


@functools.cache
def cases() -> tuple[tuple[str, int, int, int | None], ...]:
    """The campaign's cases, shared by the tests and docs/make_reliability.py: (generator, p,
    m, v) at small sizes each generator accepts, v=3 where v may vary."""
    out = []
    for name in names():
        vs = (None,) if get(name).fixed_stages_per_rank else (None, 3)
        for p, m in ((1, 1), (1, 3), (2, 2), (2, 4), (3, 3), (3, 6), (4, 8)):
            for v in vs:
                try:
                    generate(name, p, m, v)
                except SpecError:
                    continue
                out.append((name, p, m, v))
    return tuple(out)


def _programs(s: Schedule) -> list[list[Action]]:
    return [list(p) for p in s.programs]


def mutate_schedule(rng: random.Random, s: Schedule, edits: int,
                    kinds: Sequence[str] = MUTATIONS) -> Schedule:
    """``s`` after ``edits`` random edits of the kinds named (see :data:`MUTATIONS`).

    Unlike tests/ir/test_validate.py's single-rule mutations, these edits may cancel, combine or
    leave the schedule valid: :func:`rule_oracle` says what the result breaks.
    """
    spec = s.spec
    S, m, p = spec.num_stages, spec.num_microbatches, spec.num_ranks
    progs = _programs(s)
    for _ in range(edits):
        kind = rng.choice(list(kinds))
        filled = [r for r, prog in enumerate(progs) if prog]
        if not filled:
            break
        r = rng.choice(filled)
        prog = progs[r]
        i = rng.randrange(len(prog))
        a = prog[i]
        if kind == "drop":
            prog.pop(i)
        elif kind == "duplicate":
            prog.insert(rng.randint(0, len(prog)), a)
        elif kind == "move-rank":
            t = rng.randrange(p)
            prog.pop(i)
            progs[t].insert(rng.randint(0, len(progs[t])), a)
        elif kind == "renumber-mb":  # within range: often onto a microbatch already there
            prog[i] = Action(a.stage, a.kind, rng.randrange(m))
        elif kind == "renumber-stage":  # within range: on this rank or another
            prog[i] = Action(rng.randrange(S), a.kind, a.mb)
        elif kind == "change-kind":
            prog[i] = Action(a.stage, rng.choice([k for k in Pass if k is not a.kind]), a.mb)
        elif kind == "swap":
            k = rng.randrange(len(prog))
            prog[i], prog[k] = prog[k], prog[i]
        elif kind == "reverse-rank":
            prog.reverse()
        elif kind == "shuffle-rank":
            rng.shuffle(prog)
        elif kind == "exchange-programs":
            t = rng.randrange(p)
            progs[r], progs[t] = progs[t], progs[r]
        else:  # out-of-range: negative or past the end, stage or microbatch
            if rng.random() < 0.5:
                prog[i] = Action(a.stage, a.kind, rng.choice([-1, m, m + 7, 10**12]))
            else:
                prog[i] = Action(rng.choice([-1, S, 10**9]), a.kind, a.mb)
    return Schedule(spec, tuple(tuple(q) for q in progs), s.name)


RULE_GROUPS = (("range", "placement", "duplicate"), ("split-or-fused",), ("missing",),
               ("dependency",))


def rule_oracle(s: Schedule) -> set[str] | None:
    """The rules ``s`` breaks, computed without the validator; None when it is valid.

    The validator reports the first broken rule of :data:`RULE_GROUPS` in group order (within
    the first group, in program order), so the rules returned are those of the first group that
    has any. ``dependency`` is decided by the event engine: a schedule that passes the other
    rules is executable exactly when a list execution (each rank runs its next pass as soon as
    its dependencies ran) finishes it; the one here is written independently of
    :mod:`pipeblocks.ir.deps`, which the validator and the simulator share.
    """
    spec = s.spec
    S, m = spec.num_stages, spec.num_microbatches
    broken: set[str] = set()
    seen: dict[Action, int] = {}
    for r, _, a in s.actions():
        if not (0 <= a.stage < S and 0 <= a.mb < m):
            broken.add("range")
            continue
        if spec.rank_of(a.stage) != r:
            broken.add("placement")
        seen[a] = seen.get(a, 0) + 1
    if any(n > 1 for n in seen.values()):
        broken.add("duplicate")
    if broken:
        return broken
    pairs = {(a.stage, a.mb) for a in seen}
    for st, j in pairs:
        b, w, bw = (Action(st, k, j) in seen for k in (Pass.B, Pass.W, Pass.BW))
        if b != w or (bw and (b or w)):
            return {"split-or-fused"}
    for st in range(S):
        for j in range(m):
            if Action(st, Pass.F, j) not in seen or not (
                    Action(st, Pass.B, j) in seen or Action(st, Pass.BW, j) in seen):
                return {"missing"}
    done: set[tuple[str, int, int]] = set()  # ("F" or "B", stage, mb): B stands for B or BW
    pos = [0] * spec.num_ranks
    moved = True
    while moved:  # run every rank whose next pass has its dependencies done, until none can
        moved = False
        for r, prog in enumerate(s.programs):
            while pos[r] < len(prog) and all(d in done for d in _deps(prog[pos[r]], S)):
                a = prog[pos[r]]
                done.add(("F" if a.kind is Pass.F else "W" if a.kind is Pass.W else "B",
                          a.stage, a.mb))
                pos[r] += 1
                moved = True
    if any(pos[r] < len(prog) for r, prog in enumerate(s.programs)):
        return {"dependency"}
    return None


def _deps(a: Action, num_stages: int) -> list[tuple[str, int, int]]:
    """docs/design.md, "Passes and dependencies", written out again (not pipeblocks.ir.deps): F
    after the previous stage's F; B or BW after its own F and the next stage's B or BW; W
    after B."""
    s, j = a.stage, a.mb
    if a.kind is Pass.F:
        return [("F", s - 1, j)] if s > 0 else []
    if a.kind is Pass.W:
        return [("B", s, j)]
    return [("F", s, j)] + ([("B", s + 1, j)] if s < num_stages - 1 else [])


# --- lowered-program mutations ------------------------------------------------------------------

LOWERED_MUTATIONS = ("drop-comm", "duplicate-comm", "swap-comms", "move-comm", "swap-adjacent",
                     "wrong-peer", "recv-to-end", "send-to-start")


def mutate_lowered(rng: random.Random, low: LoweredSchedule, edits: int) -> LoweredSchedule:
    """``low`` after ``edits`` random edits of its sends and receives (computes keep their
    order, except where two neighbouring ops trade places)."""
    progs: list[list[Op]] = [list(p) for p in low.programs]
    p = len(progs)
    for _ in range(edits):
        kind = rng.choice(LOWERED_MUTATIONS)
        comm_at = [(r, i) for r, prog in enumerate(progs) for i, op in enumerate(prog)
                   if isinstance(op, Comm)]
        if not comm_at:
            break
        r, i = rng.choice(comm_at)
        prog = progs[r]
        op = prog[i]
        assert isinstance(op, Comm)
        if kind == "drop-comm":
            prog.pop(i)
        elif kind == "duplicate-comm":
            prog.insert(rng.randint(0, len(prog)), op)
        elif kind == "swap-comms":
            mine = [k for k, q in enumerate(prog) if isinstance(q, Comm)]
            k = rng.choice(mine)
            prog[i], prog[k] = prog[k], prog[i]
        elif kind == "move-comm":
            prog.pop(i)
            prog.insert(rng.randint(0, len(prog)), op)
        elif kind == "swap-adjacent":
            k = min(i + 1, len(prog) - 1) if rng.random() < 0.5 else max(i - 1, 0)
            prog[i], prog[k] = prog[k], prog[i]
        elif kind == "wrong-peer":
            prog[i] = Comm(op.op, rng.randrange(p), op.transfer)
        elif kind == "recv-to-end" and op.op is CommOp.RECV:
            prog.append(prog.pop(i))
        elif kind == "send-to-start" and op.op is CommOp.SEND:
            prog.insert(0, prog.pop(i))
    return LoweredSchedule(low.schedule, tuple(tuple(q) for q in progs))


def fifo_run(low: LoweredSchedule) -> str | None:
    """Execute ``low`` the way a runtime would, with nothing assumed; return None when every
    rank finishes with every message delivered to the receive meant for it, else why not.

    Model (independent of :mod:`pipeblocks.sim.deadlock`): per (sender, receiver) pair the
    k-th send pairs with the k-th receive posted on the receiver (untagged point-to-point, as
    gloo and NCCL pair them). A receive posts and goes on. A send needs the pass that produces
    its tensor done on its own rank, and blocks until its paired receive is posted (a
    rendezvous, the strictest transport); a pair that carries another message, or a peer that
    is not the other stage's rank, is a failure. A pass needs its incoming messages delivered
    to receives on its own rank and its own rank's dependencies done. Each message is one
    tensor: sent once and received once. At the end every posted receive must be matched.
    """
    spec = low.schedule.spec
    ranks = tuple(spec.rank_of(st) for st in range(spec.num_stages))
    S = spec.num_stages
    progs = low.programs
    posted: dict[tuple[int, int], deque[Any]] = {}
    delivered: dict[int, set[Any]] = {r: set() for r in range(len(progs))}
    done: dict[int, set[Action]] = {r: set() for r in range(len(progs))}
    finished: dict[int, set[tuple[str, int, int]]] = {r: set() for r in range(len(progs))}
    ever_posted: set[Any] = set()  # each message is one tensor: sent once, received once
    ever_sent: set[Any] = set()
    pos = [0] * len(progs)

    def step(r: int) -> bool | str:
        op = progs[r][pos[r]]
        if isinstance(op, Comm):
            t = op.transfer
            if not (0 <= t.src_stage < S and 0 <= t.dst_stage < S):
                return f"rank {r}: {op} names no stage"
            if op.op is CommOp.RECV:
                if ranks[t.dst_stage] != r or ranks[t.src_stage] != op.peer:
                    return f"rank {r}: {op} receives on the wrong rank or from the wrong peer"
                if t in ever_posted:
                    return f"rank {r}: {op} posts a second receive of one message"
                ever_posted.add(t)
                posted.setdefault((op.peer, r), deque()).append(t)
                return True
            if ranks[t.src_stage] != r or ranks[t.dst_stage] != op.peer:
                return f"rank {r}: {op} sends from the wrong rank or to the wrong peer"
            producer = next((a for a in done[r] if t in _outgoing(ranks, a)), None)
            if producer is None:
                return False  # its tensor does not exist yet (maybe never: then it hangs)
            queue = posted.get((r, op.peer))
            if not queue:
                return False  # rendezvous: wait for the receiver to post
            if t in ever_sent:
                return f"rank {r}: {op} sends one message twice"
            ever_sent.add(t)
            head = queue.popleft()
            if head != t:
                return f"rank {r} sends {t} but rank {op.peer}'s receive is for {head}"
            delivered[op.peer].add(t)
            return True
        if any(t not in delivered[r] for t in _incoming(ranks, op)):
            return False
        if any(ranks[st] == r and (kind, st, j) not in finished[r]
               for kind, st, j in _deps(op, S)):
            return False
        done[r].add(op)
        finished[r].add(("F" if op.kind is Pass.F else "W" if op.kind is Pass.W else "B",
                         op.stage, op.mb))
        for t in _incoming(ranks, op):
            delivered[r].discard(t)
        return True

    moved = True
    while moved:
        moved = False
        for r in range(len(progs)):
            while pos[r] < len(progs[r]):
                result = step(r)
                if isinstance(result, str):
                    return result
                if not result:
                    break
                pos[r] += 1
                moved = True
    stuck = [r for r in range(len(progs)) if pos[r] < len(progs[r])]
    if stuck:
        return f"ranks {stuck} never finish"
    left = {k: list(q) for k, q in posted.items() if q}
    if left:
        return f"receives never matched: {left}"
    return None
