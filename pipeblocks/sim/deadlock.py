"""The deadlock check: run lowered programs with blocking (rendezvous) sends.

The model is the strictest a transport can be, so a schedule that passes runs on any of them:

- ``RECV`` posts a receive and never blocks.
- ``SEND`` blocks its rank until the peer has *posted* the matching receive.
- A compute blocks until each transfer it consumes has been sent (and its receive was posted
  earlier on its own rank), and until its same-rank dependencies have run.

Each rank's next op is blocked or not by facts that, once true, stay true, so every fair
interleaving ends in the same state: one run decides. Before it, a static pass checks the
rules a runtime needs (each raises :class:`~pipeblocks.errors.ScheduleError` naming the rule):

- ``comm-peer``: a send or receive names the rank that really holds the other stage.
- ``comm-match``: every cross-rank transfer has exactly one send on its producer's rank, after
  its producing pass, and one receive on its consumer's rank, before its consuming pass.
- ``send-recv-order``: per (source, destination) pair the sends and the receives come in the
  same order (untagged messages pair first-in first-out).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.ir.lowering import lower
    >>> check(lower(generate("1f1b", num_ranks=4, num_microbatches=8)))
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable

from pipeblocks.errors import DeadlockError, ScheduleError
from pipeblocks.ir.actions import Action
from pipeblocks.ir.deps import key, needs
from pipeblocks.ir.lowering import (
    Comm,
    CommOp,
    LoweredSchedule,
    Op,
    Transfer,
    _incoming,
    _outgoing,
    _ranks,
    lower,
    op_text,
)
from pipeblocks.ir.schedule import Schedule

__all__ = ["check"]

log = logging.getLogger(__name__)


def _fail(rule: str, rank: int, pos: int, text: str) -> None:
    raise ScheduleError(
        f"invalid lowered schedule ({rule}): rank {rank}, op {pos}: {text}",
        rule=rule,
        rank=rank,
        position=pos,
    )


def _check_static(low: LoweredSchedule) -> None:
    spec = low.schedule.spec
    ranks = _ranks(spec)
    sends: dict[Transfer, tuple[int, int]] = {}
    recvs: dict[Transfer, tuple[int, int]] = {}
    order: dict[tuple[int, int, CommOp], list[Transfer]] = defaultdict(list)
    for rank, prog in enumerate(low.programs):
        produced: set[Transfer] = set()
        posted: set[Transfer] = set()
        for pos, op in enumerate(prog):
            if isinstance(op, Comm):
                t = op.transfer
                if not (0 <= t.src_stage < len(ranks) and 0 <= t.dst_stage < len(ranks)):
                    _fail("comm-peer", rank, pos, f"{op} names a stage outside 0..{len(ranks) - 1}")
                src, dst = ranks[t.src_stage], ranks[t.dst_stage]
                mine, peer = (src, dst) if op.op is CommOp.SEND else (dst, src)
                if src == dst or (mine, peer) != (rank, op.peer):
                    _fail("comm-peer", rank, pos,
                          f"{op} does not fit placement '{spec.placement.value}': stage "
                          f"{t.src_stage} is on rank {src} and stage {t.dst_stage} on rank {dst}")
                table = sends if op.op is CommOp.SEND else recvs
                if t in table:
                    _fail("comm-match", rank, pos, f"{op} appears twice (first at op "
                          f"{table[t][1]}); keep one")
                table[t] = (rank, pos)
                if op.op is CommOp.SEND:
                    if t not in produced:
                        _fail("comm-match", rank, pos,
                              f"{op} comes before the pass that produces it; send right after it")
                    order[(rank, op.peer, op.op)].append(t)
                else:
                    posted.add(t)
                    order[(op.peer, rank, op.op)].append(t)
            else:
                for t in _incoming(ranks, op):
                    if t not in posted:
                        _fail("comm-match", rank, pos,
                              f"{op} consumes {t} but no receive of it is posted before it; add "
                              f"recv({t}) earlier on rank {rank}")
                produced.update(_outgoing(ranks, op))
    for t in sends.keys() ^ recvs.keys():
        rank, pos = sends.get(t) or recvs[t]
        what = "a send but no receive" if t in sends else "a receive but no send"
        _fail("comm-match", rank, pos, f"transfer {t} has {what}; lower() adds both")
    expected = {t for _, _, a in low.schedule.actions() for t in _outgoing(ranks, a)}
    for t in expected - sends.keys():
        src = ranks[t.src_stage]
        _fail("comm-match", src, len(low.programs[src]),
              f"transfer {t} is never sent; add send({t}) right after its producing pass")
    for (src, dst, kind), seq in order.items():
        if kind is not CommOp.SEND:
            continue
        other = order.get((src, dst, CommOp.RECV), [])
        for i, (a, b) in enumerate(zip(seq, other, strict=False)):
            if a != b:
                _fail("send-recv-order", dst, recvs[b][1],
                      f"rank {src} sends to rank {dst} in another order than rank {dst} "
                      f"receives: message {i} is {a} on the sender but {b} on the receiver; "
                      f"post the receives in the order the peer sends")


def check(lowered: LoweredSchedule | Schedule) -> None:
    """Raise if ``lowered`` (a schedule is lowered first) can deadlock; return None if not.

    A deadlock raises :class:`~pipeblocks.errors.DeadlockError`; ``blocked`` maps every stuck
    rank to its head op and what it waits for.
    """
    low = lower(lowered) if isinstance(lowered, Schedule) else lowered
    _check_static(low)
    spec = low.schedule.spec
    ranks = _ranks(spec)
    num_stages = spec.num_stages
    programs = low.programs
    posted: set[Transfer] = set()
    sent: set[Transfer] = set()
    done: set[Action] = set()
    waiting: dict[Hashable, list[int]] = defaultdict(list)
    pos = [0] * len(programs)
    ready = list(range(len(programs)))

    def wait_for(rank: int, op: Op) -> Hashable | None:
        """What ``op`` still waits for (a hashable fact), or None when it can run."""
        if isinstance(op, Comm):
            if op.op is CommOp.SEND and op.transfer not in posted:
                return ("posted", op.transfer)
            return None
        for t in _incoming(ranks, op):
            if t not in sent:
                return ("sent", t)
        for need in needs(op, num_stages):
            if ranks[need.stage] == rank and need not in done:
                return ("done", need)
        return None

    while ready:
        rank = ready.pop()
        prog = programs[rank]
        while pos[rank] < len(prog):
            op = prog[pos[rank]]
            fact = wait_for(rank, op)
            if fact is not None:
                waiting[fact].append(rank)
                break
            if isinstance(op, Comm):
                fact = ("posted" if op.op is CommOp.RECV else "sent", op.transfer)
                (posted if op.op is CommOp.RECV else sent).add(op.transfer)
            else:
                fact = ("done", key(op))
                done.add(key(op))
            pos[rank] += 1
            woken = waiting.pop(fact, None)
            if woken:
                ready.extend(woken)
    stuck = {r: programs[r][pos[r]] for r in range(len(programs)) if pos[r] < len(programs[r])}
    if stuck:
        blocked = {r: _describe(r, op, wait_for(r, op)) for r, op in sorted(stuck.items())}
        text = "; ".join(f"rank {r} at {h}" for r, h in blocked.items())
        raise DeadlockError(
            f"lowered schedule {low.schedule.name or '(unnamed)'} deadlocks with blocking "
            f"sends: {text}; post receives earlier (as lower() does) or reorder the sends",
            blocked=blocked,
        )
    log.debug("no deadlock: %d ops", sum(len(p) for p in programs))


def _describe(rank: int, op: Op, fact: Hashable | None) -> str:
    head = str(op) if isinstance(op, Comm) else op_text(op)
    if not isinstance(fact, tuple):
        return head
    what, item = fact
    if what == "posted":
        assert isinstance(op, Comm)
        return f"{head} (waits for rank {op.peer} to post the receive)"
    if what == "sent":
        return f"{head} (waits for {item} to be sent)"
    return f"{head} (waits for {item} on its own rank)"
