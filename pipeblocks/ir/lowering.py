"""Lowering: add the point-to-point sends and receives the runtime executes.

Every dependency between stages on different ranks is a :class:`Transfer`: the activation of
F(s, j) going to stage s+1 (``ACT``), or the input gradient of B/BW(s, j) going to stage s-1
(``GRAD``). A transfer between stages on the same rank (the V turn, see :mod:`pipeblocks.ir`)
is handed over in memory and gets no op.

What the runtime relies on (docs/design.md, "Lowering and the receive rule"):

- ``SEND`` posts a non-blocking send of the tensor the rank's last compute produced; every send
  comes right after its producing pass.
- ``RECV`` posts a non-blocking receive; a compute waits for its own posted receives
  (:func:`incoming`) before it runs.
- Per (source rank, destination rank) pair, the sends and the receives appear in the same
  order on both sides (FIFO matching, as NCCL and gloo pair untagged messages).

**Receive-posting rule.** Posting every receive at the start is always safe but holds one
buffer per message for the whole step. Posting it just before its consumer deadlocks as soon
as a peer sends early (1F1B, p=2: rank 0 sends F1's activation while rank 1 sends B0's
gradient, each waiting for the other to receive). We post each receive as late as one fixed
reference execution allows: run the schedule with unit times as soon as possible (F = B = W =
1, BW = 2, no transfer cost) and order all passes by end time (ties by rank). That order
respects every dependency and every program, so it is an execution; the receive of a transfer
is posted on the consumer right after its last pass that comes before the producing pass in
that order (after that pass's sends), or at the start of the program if there is none. Then
every send, when the reference execution reaches it, finds its receive already posted, so a
blocking (rendezvous) execution cannot deadlock, whatever the real times
(:func:`pipeblocks.sim.deadlock.check` verifies it). Receives on one pair come in the producer's
order, so FIFO holds. A receive is thus posted about when its message is sent: it holds a
buffer only while the message is in flight or waits for its consumer, as a buffered transport
would, and never after the consumer's previous pass.

    >>> from pipeblocks.generators import generate
    >>> low = lower(generate("1f1b", num_ranks=2, num_microbatches=2))
    >>> for r, prog in enumerate(low.programs):
    ...     print(f"rank {r}:", " ".join(op_text(op) for op in prog))
    rank 0: 0F0 send(act 0->1 #0) 0F1 send(act 0->1 #1) recv(grad 1->0 #0) 0BW0 recv(grad 1->0 #1) 0BW1
    rank 1: recv(act 0->1 #0) recv(act 0->1 #1) 1F0 1BW0 send(grad 1->0 #0) 1F1 1BW1 send(grad 1->0 #1)
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass

from pipeblocks.errors import DeadlockError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.deps import key, walk
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec

__all__ = [
    "Payload",
    "Transfer",
    "CommOp",
    "Comm",
    "Op",
    "LoweredSchedule",
    "lower",
    "incoming",
    "outgoing",
    "transfers",
    "op_text",
]


class Payload(enum.Enum):
    """What a transfer carries."""

    ACT = "act"  # output of F(s, j) -> input of stage s+1's F
    GRAD = "grad"  # input-gradient from B/BW(s, j) -> stage s-1's B/BW


@dataclass(frozen=True, slots=True, order=True)
class Transfer:
    """One message: ``payload`` of microbatch ``mb`` from stage ``src_stage`` to ``dst_stage``."""

    payload: Payload
    src_stage: int
    dst_stage: int
    mb: int

    def __str__(self) -> str:
        return f"{self.payload.value} {self.src_stage}->{self.dst_stage} #{self.mb}"


class CommOp(enum.Enum):
    """Post a non-blocking send or receive."""

    SEND = "send"
    RECV = "recv"


@dataclass(frozen=True, slots=True)
class Comm:
    """A send to, or a receive from, rank ``peer``."""

    op: CommOp
    peer: int
    transfer: Transfer

    def __str__(self) -> str:
        way = "to" if self.op is CommOp.SEND else "from"
        return f"{self.op.value}({self.transfer}) {way} rank {self.peer}"


Op = Action | Comm


def op_text(op: Op) -> str:
    """Short text of an op: ``0F1`` or ``send(act 0->1 #1)`` (the peer follows from the stages)."""
    if isinstance(op, Comm):
        return f"{op.op.value}({op.transfer})"
    return str(op)


@dataclass(frozen=True, slots=True)
class LoweredSchedule:
    """A schedule with its sends and receives: ``programs[r]`` is rank r's ops in order."""

    schedule: Schedule
    programs: tuple[tuple[Op, ...], ...]

    def __str__(self) -> str:
        return "\n".join(
            f"rank {r}: " + " ".join(op_text(op) for op in prog)
            for r, prog in enumerate(self.programs)
        )

    def comms(self, rank: int) -> tuple[Comm, ...]:
        """The sends and receives of ``rank``, in order."""
        return tuple(op for op in self.programs[rank] if isinstance(op, Comm))

    def max_posted(self) -> tuple[int, ...]:
        """Per rank: the most receives posted and not yet consumed at once (receive buffers)."""
        ranks = _ranks(self.schedule.spec)
        out = []
        for prog in self.programs:
            held = peak = 0
            for op in prog:
                if isinstance(op, Comm):
                    if op.op is CommOp.RECV:
                        held += 1
                        peak = max(peak, held)
                elif isinstance(op, Action):  # not a data-parallel op (ir/hybrid.py)
                    held -= len(_incoming(ranks, op))
            out.append(peak)
        return tuple(out)


def incoming(spec: PipelineSpec, action: Action) -> tuple[Transfer, ...]:
    """The cross-rank transfers ``action`` consumes (what it waits for before running).

    >>> spec = PipelineSpec(2, 4, 2, "v")   # stages 0,3 on rank 0; 1,2 on rank 1
    >>> incoming(spec, Action(1, Pass.F, 0)), incoming(spec, Action(2, Pass.F, 0))
    ((Transfer(payload=<Payload.ACT: 'act'>, src_stage=0, dst_stage=1, mb=0),), ())
    """
    return _incoming(_ranks(spec), action)


def outgoing(spec: PipelineSpec, action: Action) -> tuple[Transfer, ...]:
    """The cross-rank transfers ``action`` produces (sent right after it runs).

    >>> outgoing(PipelineSpec(2, 4), Action(1, Pass.BW, 3))
    (Transfer(payload=<Payload.GRAD: 'grad'>, src_stage=1, dst_stage=0, mb=3),)
    """
    return _outgoing(_ranks(spec), action)


def _ranks(spec: PipelineSpec) -> tuple[int, ...]:
    """rank_of for every stage, as a table (the hot loops index it instead of calling)."""
    return tuple(spec.rank_of(s) for s in range(spec.num_stages))


def _incoming(ranks: tuple[int, ...], action: Action) -> tuple[Transfer, ...]:
    s, j, kind = action.stage, action.mb, action.kind
    if kind is Pass.F:
        if s > 0 and ranks[s - 1] != ranks[s]:
            return (Transfer(Payload.ACT, s - 1, s, j),)
    elif kind is Pass.B or kind is Pass.BW:
        if s < len(ranks) - 1 and ranks[s + 1] != ranks[s]:
            return (Transfer(Payload.GRAD, s + 1, s, j),)
    return ()


def _outgoing(ranks: tuple[int, ...], action: Action) -> tuple[Transfer, ...]:
    s, j, kind = action.stage, action.mb, action.kind
    if kind is Pass.F:
        if s < len(ranks) - 1 and ranks[s + 1] != ranks[s]:
            return (Transfer(Payload.ACT, s, s + 1, j),)
    elif kind is Pass.B or kind is Pass.BW:
        if s > 0 and ranks[s - 1] != ranks[s]:
            return (Transfer(Payload.GRAD, s, s - 1, j),)
    return ()


def transfers(schedule: Schedule) -> int:
    """The number of cross-rank transfers of one step (the P2P volume in messages)."""
    ranks = _ranks(schedule.spec)
    return sum(len(_outgoing(ranks, a)) for _, _, a in schedule.actions())


def _reference_order(schedule: Schedule) -> list[list[tuple[float, int]]]:
    """Per rank, the sort key (end time, rank) of each pass in the unit-time ASAP execution."""
    p = schedule.spec.num_ranks
    end: dict[Action, float] = {}
    free = [0.0] * p
    keys: list[list[tuple[float, int]]] = [[] for _ in range(p)]

    def visit(rank: int, pos: int, action: Action, deps: tuple[tuple[int, Action], ...]) -> None:
        start = max([free[rank], *(end[d] for _, d in deps)])
        finish = start + (2.0 if action.kind is Pass.BW else 1.0)
        free[rank] = finish
        end[key(action)] = finish
        keys[rank].append((finish, rank))

    blocked = walk(schedule, visit)
    if blocked:
        heads = {b.rank: f"{b.action} (waits for {b.missing})" for b in blocked}
        raise DeadlockError(
            "cannot lower a schedule whose passes cannot all run; validate it first "
            f"(blocked: {'; '.join(f'rank {r}: {h}' for r, h in sorted(heads.items()))})",
            blocked=heads,
        )
    return keys


def lower(schedule: Schedule) -> LoweredSchedule:
    """Insert sends right after each producing pass and receives by the posting rule above.

    The schedule must be valid (:func:`pipeblocks.ir.validate`); a schedule whose passes cannot
    all run raises :class:`~pipeblocks.errors.DeadlockError`.
    """
    spec = schedule.spec
    ranks = _ranks(spec)
    keys = _reference_order(schedule)
    sends = [[_outgoing(ranks, a) for a in prog] for prog in schedule.programs]
    # recvs[r][i]: receives rank r posts after its pass i-1 and that pass's sends (i = 0: at
    # the start), as (producer's key, transfer) so that one pair's receives keep send order.
    recvs: list[list[list[tuple[tuple[float, int], Transfer]]]] = [
        [[] for _ in range(len(prog) + 1)] for prog in schedule.programs
    ]
    for rank, rank_sends in enumerate(sends):
        for pos, out in enumerate(rank_sends):
            for t in out:
                dst = ranks[t.dst_stage]
                k = keys[rank][pos]
                # passes of dst that come before the producer in the reference order
                recvs[dst][bisect.bisect_left(keys[dst], k)].append((k, t))
    programs: list[tuple[Op, ...]] = []
    for rank, prog in enumerate(schedule.programs):
        ops: list[Op] = []
        for pos in range(len(prog) + 1):
            posted = recvs[rank][pos]
            if len(posted) > 1:
                posted.sort(key=lambda kt: kt[0])  # producer's key: unique, the send order
            for _, t in posted:
                ops.append(Comm(CommOp.RECV, ranks[t.src_stage], t))
            if pos == len(prog):
                break
            ops.append(prog[pos])
            for t in sends[rank][pos]:
                ops.append(Comm(CommOp.SEND, ranks[t.dst_stage], t))
        programs.append(tuple(ops))
    return LoweredSchedule(schedule, tuple(programs))
