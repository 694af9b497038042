"""Lowering (sends and receives) and the blocking-send deadlock check."""

from __future__ import annotations

import pytest

from pipeblocks.errors import DeadlockError, ScheduleError, SpecError
from pipeblocks.generators import generate, names
from pipeblocks.ir import Action, Pass, Schedule
from pipeblocks.ir.lowering import (
    Comm,
    CommOp,
    LoweredSchedule,
    Op,
    Payload,
    Transfer,
    incoming,
    lower,
    outgoing,
    transfers,
)
from pipeblocks.sim.deadlock import check


def naive_lowering(schedule: Schedule) -> LoweredSchedule:
    """Each receive just before its consumer, each send just after its producer."""
    spec = schedule.spec
    programs = []
    for prog in schedule.programs:
        ops: list[Op] = []
        for a in prog:
            ops += [Comm(CommOp.RECV, spec.rank_of(t.src_stage), t) for t in incoming(spec, a)]
            ops.append(a)
            ops += [Comm(CommOp.SEND, spec.rank_of(t.dst_stage), t) for t in outgoing(spec, a)]
        programs.append(tuple(ops))
    return LoweredSchedule(schedule, tuple(programs))


def test_lowered_1f1b_by_hand() -> None:
    """1F1B p=2 m=2 lowers to the ops worked out by hand (sends after, receives early)."""
    act = [Transfer(Payload.ACT, 0, 1, j) for j in range(2)]
    grad = [Transfer(Payload.GRAD, 1, 0, j) for j in range(2)]
    low = lower(generate("1f1b", 2, 2))
    assert low.programs == (
        (Action(0, Pass.F, 0), Comm(CommOp.SEND, 1, act[0]),
         Action(0, Pass.F, 1), Comm(CommOp.SEND, 1, act[1]),
         Comm(CommOp.RECV, 1, grad[0]), Action(0, Pass.BW, 0),
         Comm(CommOp.RECV, 1, grad[1]), Action(0, Pass.BW, 1)),
        (Comm(CommOp.RECV, 0, act[0]), Comm(CommOp.RECV, 0, act[1]),
         Action(1, Pass.F, 0), Action(1, Pass.BW, 0), Comm(CommOp.SEND, 0, grad[0]),
         Action(1, Pass.F, 1), Action(1, Pass.BW, 1), Comm(CommOp.SEND, 0, grad[1])),
    )


def test_v_turn_has_no_comm() -> None:
    """Under the V placement the hand-over on rank p-1 is in memory: no op names stages p-1, p."""
    p = 4
    low = lower(generate("zb-v", p, 8))
    turn = {(p - 1, p), (p, p - 1)}
    comms = [op for prog in low.programs for op in prog if isinstance(op, Comm)]
    assert comms and all((op.transfer.src_stage, op.transfer.dst_stage) not in turn
                         for op in comms)
    # 2 directions x (S-1 edges, one of them local) x m microbatches
    assert transfers(low.schedule) == 2 * (2 * p - 2) * 8 == len(comms) // 2


def cases() -> list[tuple[str, int, Schedule]]:
    """Every registered generator at p = 2..16 with the first m in (2p+1, 2p, 4p) it accepts."""
    out = []
    for name in names():
        for p in range(2, 17):
            for m in (2 * p + 1, 2 * p, 4 * p):
                try:
                    out.append((name, p, generate(name, p, m)))
                except SpecError:
                    continue
                break
    return out


CASES = cases()


def test_every_generator_has_cases() -> None:
    """Each registered generator is exercised for every p in 2..16."""
    for name in names():
        assert [p for n, p, _ in CASES if n == name] == list(range(2, 17)), name


@pytest.mark.parametrize("name", sorted(names()))
def test_lowered_generators_never_deadlock(name: str) -> None:
    """The lowered order of every generator passes the blocking-send check for p in 2..16."""
    for n, _, schedule in CASES:
        if n == name:
            low = lower(schedule)
            check(low)
            # the posting rule never posts a receive after its consumer's previous pass:
            # checked by the static pass; and it posts fewer buffers than "all at the start"
            total = [sum(1 for op in prog if isinstance(op, Comm) and op.op is CommOp.RECV)
                     for prog in low.programs]
            assert all(b <= t for b, t in zip(low.max_posted(), total, strict=True))


@pytest.mark.parametrize("name", ["1f1b", "gpipe", "zb-h1"])
def test_posting_rule_keeps_few_buffers(name: str) -> None:
    """On the single-chunk schedules at most 2 receives are posted and unconsumed at once."""
    low = lower(generate(name, 4, 64))
    assert max(low.max_posted()) <= 2
    assert sum(1 for op in low.programs[1] if isinstance(op, Comm) and op.op is CommOp.RECV) == 128


def test_receive_just_before_consumer_deadlocks() -> None:
    """The crossing of 1F1B p=2: both ranks block sending to each other and both are named."""
    with pytest.raises(DeadlockError) as err:
        check(naive_lowering(generate("1f1b", 2, 2)))
    blocked = err.value.blocked
    assert set(blocked) == {0, 1}
    assert blocked[0].startswith("send(act 0->1 #1)") and "post the receive" in blocked[0]
    assert blocked[1].startswith("send(grad 1->0 #0)")


def test_naive_lowering_deadlocks_for_every_1f1b_depth() -> None:
    """Receive-before-consumer deadlocks 1F1B for p >= 2 whenever m >= 2: the rule matters."""
    for p in range(2, 7):
        with pytest.raises(DeadlockError):
            check(naive_lowering(generate("1f1b", p, p + 1)))


def test_crossed_receive_order_is_caught() -> None:
    """Receives posted in another order than the peer sends break FIFO matching."""
    low = lower(generate("gpipe", 2, 2))
    rank1 = list(low.programs[1])
    i, j = (k for k, op in enumerate(rank1) if isinstance(op, Comm) and op.op is CommOp.RECV
            and op.transfer.payload is Payload.ACT)
    rank1[i], rank1[j] = rank1[j], rank1[i]
    bad = LoweredSchedule(low.schedule, (low.programs[0], tuple(rank1)))
    with pytest.raises(ScheduleError) as err:
        check(bad)
    assert err.value.rule == "send-recv-order"


def test_send_chain_deadlock_names_every_rank() -> None:
    """1F1B p=3 m=3 with late receives: every rank is stuck in a send, each one named."""
    with pytest.raises(DeadlockError) as err:
        check(naive_lowering(generate("1f1b", 3, 3)))
    assert err.value.blocked == {
        0: "send(act 0->1 #2) to rank 1 (waits for rank 1 to post the receive)",
        1: "send(act 1->2 #1) to rank 2 (waits for rank 2 to post the receive)",
        2: "send(grad 2->1 #0) to rank 1 (waits for rank 1 to post the receive)",
    }
    assert "rank 0 at send(act 0->1 #2)" in str(err.value)


def test_one_way_waves_survive_late_receives() -> None:
    """GPipe never sends both ways at once, so even receive-before-consumer passes."""
    check(naive_lowering(generate("gpipe", 3, 2)))


def test_static_rules() -> None:
    """A missing send, a wrong peer, a duplicated receive, a compute before its receive and a
    send before its producer each name their rule."""
    low = lower(generate("1f1b", 2, 2))
    r0, r1 = list(low.programs[0]), list(low.programs[1])
    no_send = [op for op in r0 if not (isinstance(op, Comm) and op.op is CommOp.SEND)]
    with pytest.raises(ScheduleError, match="comm-match"):
        check(LoweredSchedule(low.schedule, (tuple(no_send), tuple(r1))))
    k = next(i for i, op in enumerate(r0) if isinstance(op, Comm))
    wrong = Comm(r0[k].op, 0, r0[k].transfer)  # type: ignore[union-attr]
    with pytest.raises(ScheduleError, match="comm-peer"):
        check(LoweredSchedule(low.schedule, (tuple(r0[:k] + [wrong] + r0[k + 1:]), tuple(r1))))
    dup = r1[:1] + r1
    with pytest.raises(ScheduleError, match="comm-match"):
        check(LoweredSchedule(low.schedule, (tuple(r0), tuple(dup))))
    late = r1[2:3] + r1[:2] + r1[3:]  # 1F0 before both receives
    with pytest.raises(ScheduleError, match="no receive of it is posted before it"):
        check(LoweredSchedule(low.schedule, (tuple(r0), tuple(late))))
    early = r0[1:2] + r0[:1] + r0[2:]  # send act #0 before 0F0
    with pytest.raises(ScheduleError, match="comes before the pass that produces it"):
        check(LoweredSchedule(low.schedule, (tuple(early), tuple(r1))))


def test_check_accepts_a_schedule() -> None:
    """check() lowers a plain Schedule itself."""
    check(generate("zb-h2", 4, 8))
