"""The validator: hand-made cases, and mutations of every generator's schedules.

Each mutation breaks exactly one rule, and the rule it breaks follows from the mutation alone:

- drop an F or a BW -> ``missing``; drop a B or a W -> ``split-or-fused`` (its twin is left).
- duplicate an action on its own rank -> ``duplicate``.
- move an action to another rank -> ``placement``.
- renumber a microbatch (or stage) out of range -> ``range``.
- swap two actions of one rank where the later one depends, directly or through other passes,
  on the earlier one -> ``dependency``: the dependent now waits for a pass queued behind it.
  Swapping a B with its own W is the simplest such swap.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from pipeblocks.errors import ScheduleError
from pipeblocks.ir import Action, Pass, PipelineSpec, Schedule, validate
from pipeblocks.ir.validate import RULES, is_valid

F, B, W, BW = Pass.F, Pass.B, Pass.W, Pass.BW


def _draw_schedule(  # type: ignore[no-untyped-def]
    data: st.DataObject, names: list[str], sizes, schedule_of
) -> Schedule:
    name = data.draw(st.sampled_from(names), label="generator")
    p, m, v = data.draw(st.sampled_from(sizes(name)), label="p, m, v")
    return schedule_of(name, p, m, v)


def _replace(s: Schedule, rank: int, prog: list[Action]) -> Schedule:
    progs = list(s.programs)
    progs[rank] = tuple(prog)
    return Schedule(s.spec, tuple(progs), s.name)


def depends(later: Action, earlier: Action, num_stages: int) -> bool:
    """True when ``later`` needs ``earlier`` through a chain of the rules of docs/design.md,
    "Passes and dependencies".

    F(s) needs every F(t<s); a backward of s needs every F (through B(S-1), which needs
    F(S-1)) and every input-gradient pass of t > s; W(s) needs what B(s) needs, and B(s).
    """
    if later.mb != earlier.mb:
        return False
    s, t = later.stage, earlier.stage
    if later.kind is F:
        return earlier.kind is F and t < s
    if earlier.kind is F:
        return True
    if earlier.kind is W:
        return False
    return t > s or (later.kind is W and t == s)


def _rule(schedule: Schedule) -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        validate(schedule)
    assert info.value.rule in RULES
    return info.value


# --- hand-made cases ------------------------------------------------------------------------

def _tiny(*programs: str, m: int = 1, v: int = 1, placement: str = "loop") -> Schedule:
    spec = PipelineSpec(len(programs), m, v, placement)
    return Schedule(spec, tuple(tuple(Action.parse(t) for t in p.split()) for p in programs))


@pytest.mark.parametrize(
    ("programs", "rule", "rank", "position"),
    [
        (("0F0 0BW0", "1F0 1BW0"), None, None, None),
        (("0F0 0BW0", "1F0 1BW1"), "range", 1, 1),
        (("0F0 0BW0 1F0", "1BW0"), "placement", 0, 2),
        (("0F0 0BW0 0F0", "1F0 1BW0"), "duplicate", 0, 2),
        (("0F0 0B0 0BW0 0W0", "1F0 1BW0"), "split-or-fused", 0, 1),
        (("0F0 0B0", "1F0 1BW0"), "split-or-fused", 0, 1),
        (("0F0 0W0", "1F0 1BW0"), "split-or-fused", 0, 1),
        (("0F0", "1F0 1BW0"), "missing", 0, None),
        (("0BW0", "1F0 1BW0"), "missing", 0, None),
        (("0F0 0BW0", "1BW0 1F0"), "dependency", 1, 0),  # rank 0 is a victim of rank 1
        (("0BW0 0F0", "1F0 1BW0"), "dependency", 0, 0),
        (("0F0 0W0 0B0", "1F0 1BW0"), "dependency", 0, 1),
    ],
)
def test_hand_made_cases(programs, rule, rank, position) -> None:  # type: ignore[no-untyped-def]
    """Small schedules, each broken in one way, give that rule, rank and position."""
    s = _tiny(*programs)
    if rule is None:
        validate(s)
        assert is_valid(s)
        return
    err = _rule(s)
    assert (err.rule, err.rank, err.position) == (rule, rank, position)
    assert not is_valid(s)


def test_error_message_names_rule_action_and_marks_the_cell() -> None:
    """The message says rule, rank, position and the action; the grid brackets the cell."""
    err = _rule(_tiny("0F0 0BW0", "1BW0 1F0"))
    assert err.headline.startswith(
        "invalid schedule (dependency): rank 1, position 0: 1BW0 can never run: it needs 1F0, "
        "which comes later in rank 1's own program (position 1) (blocked: rank 0 at 0BW0 waits "
        "for 1BW0; rank 1 at 1BW0 waits for 1F0)")
    assert err.grid.splitlines() == ["rank 0 |  F0 BW0", "rank 1 |[BW0] F0"]
    assert str(err) == err.headline + "\n" + err.grid


def test_dependency_error_names_the_root_on_another_rank() -> None:
    """When the root wait is across ranks, the message says which head holds it up."""
    err = _rule(_tiny("0F0 0BW0 0F1 0BW1", "1F1 1BW1 1F0 1BW0", m=2))
    assert (err.rank, err.position) == (0, 1)
    assert ("0BW0 can never run: it needs 1BW0, which rank 1 reaches only at position 3, behind "
            "its blocked head 1F1 (position 0)") in err.headline


def test_missing_names_the_first_gap_in_stage_then_microbatch_order() -> None:
    """With several gaps, ``missing`` reports the smallest (stage, microbatch) lacking a pass."""
    s = _tiny("0F0 0F1 0BW1 0F2 0BW2", "1F0 1BW0 1F1 1BW1 1F2", m=3)
    assert _rule(s).headline.endswith("stage 0 microbatch 0 has no backward; add 0BW0 (or 0B0 "
                                      "and 0W0) to rank 0")
    s = _tiny("0F0 0BW0 0F1 0BW1 0F2 0BW2", "1F0 1BW0 1F1 1BW1 1BW2", m=3)
    assert "stage 1 microbatch 2 has no F; add 1F2 to rank 1" in _rule(s).headline


def test_missing_pass_message_has_no_position() -> None:
    """A missing pass has no position: the message names the rank only, never "position None"."""
    for programs in (("0F0", "1F0 1BW0"), ("0F0 0BW0", "1BW0")):
        err = _rule(_tiny(*programs))
        assert err.rule == "missing" and err.position is None
        assert "position" not in err.headline
        assert err.headline.startswith(f"invalid schedule (missing): rank {err.rank}: stage ")


def test_huge_spec_with_short_programs_fails_fast() -> None:
    """A spec of 10**12 microbatches is 'missing' at once, without scanning every microbatch."""
    s = _tiny("0F0 0BW0", m=10**12)
    assert "stage 0 microbatch 1 has no F" in _rule(s).headline


def test_negative_indices_are_range_errors() -> None:
    """Negative stages and microbatches (possible in Python) are range errors, not crashes."""
    s = Schedule(PipelineSpec(1, 1), ((Action(-1, F, 0), Action(0, F, -2)),))
    assert (_rule(s).rule, _rule(s).position) == ("range", 0)


# --- mutations of generated schedules --------------------------------------------------------

def test_every_generator_has_valid_schedules_to_mutate(  # type: ignore[no-untyped-def]
    generator_names, sizes, schedule_of
) -> None:
    """Every registered generator accepts some sizes of the test grid, and each schedule it
    makes there is valid: the premise of the mutation tests."""
    from pipeblocks.generators import names

    assert generator_names == names()
    for name in generator_names:
        for p, m, v in sizes(name):
            validate(schedule_of(name, p, m, v))


Mutation = Callable[[Schedule, st.DataObject], tuple[Schedule, str] | None]
MUTATIONS: dict[str, Mutation] = {}


def mutation(fn: Mutation) -> Mutation:
    """Register a mutation: it returns (mutated schedule, expected rule), or None if it does
    not apply to this schedule."""
    MUTATIONS[fn.__name__] = fn
    return fn


def _pick(data: st.DataObject, s: Schedule) -> tuple[int, int]:
    rank = data.draw(st.sampled_from([r for r, p in enumerate(s.programs) if p]), label="rank")
    return rank, data.draw(st.integers(0, len(s.programs[rank]) - 1), label="position")


@mutation
def drop(s: Schedule, data: st.DataObject) -> tuple[Schedule, str]:
    rank, i = _pick(data, s)
    prog = list(s.programs[rank])
    a = prog.pop(i)
    return _replace(s, rank, prog), "split-or-fused" if a.kind in (B, W) else "missing"


@mutation
def duplicate(s: Schedule, data: st.DataObject) -> tuple[Schedule, str]:
    rank, i = _pick(data, s)
    prog = list(s.programs[rank])
    prog.insert(data.draw(st.integers(0, len(prog)), label="insert at"), prog[i])
    return _replace(s, rank, prog), "duplicate"


@mutation
def move_to_another_rank(s: Schedule, data: st.DataObject) -> tuple[Schedule, str] | None:
    if s.spec.num_ranks < 2:
        return None
    rank, i = _pick(data, s)
    other = data.draw(st.sampled_from([r for r in range(s.spec.num_ranks) if r != rank]))
    prog = list(s.programs[rank])
    a = prog.pop(i)
    target = list(s.programs[other])
    target.insert(data.draw(st.integers(0, len(target)), label="insert at"), a)
    return _replace(_replace(s, rank, prog), other, target), "placement"


@mutation
def renumber_out_of_range(s: Schedule, data: st.DataObject) -> tuple[Schedule, str]:
    rank, i = _pick(data, s)
    prog = list(s.programs[rank])
    a = prog[i]
    spec = s.spec
    mb = data.draw(st.one_of(st.integers(spec.num_microbatches, 10**9), st.integers(-5, -1)))
    prog[i] = Action(a.stage, a.kind, mb)
    if data.draw(st.booleans(), label="stage too"):
        prog[i] = Action(data.draw(st.integers(spec.num_stages, 10**6)), a.kind, a.mb)
    return _replace(s, rank, prog), "range"


@mutation
def swap_across_dependency(s: Schedule, data: st.DataObject) -> tuple[Schedule, str] | None:
    S = s.spec.num_stages
    pairs = [
        (r, i, k)
        for r, prog in enumerate(s.programs)
        for k in range(len(prog))
        for i in range(k)
        if depends(prog[k], prog[i], S)
    ]
    if not pairs:
        return None  # only after earlier edits: a valid schedule always has such pairs
    r, i, k = data.draw(st.sampled_from(pairs), label="swap")
    prog = list(s.programs[r])
    prog[i], prog[k] = prog[k], prog[i]
    return _replace(s, r, prog), "dependency"


@mutation
def swap_b_and_its_w(s: Schedule, data: st.DataObject) -> tuple[Schedule, str] | None:
    pairs = [
        (r, i, prog.index(Action(a.stage, W, a.mb)))
        for r, prog in enumerate(s.programs)
        for i, a in enumerate(prog)
        if a.kind is B and Action(a.stage, W, a.mb) in prog[i + 1:]
    ]
    if not pairs:
        return None  # a schedule with fused backwards only
    r, i, k = data.draw(st.sampled_from(pairs), label="B, W")
    prog = list(s.programs[r])
    prog[i], prog[k] = prog[k], prog[i]
    return _replace(s, r, prog), "dependency"


@pytest.mark.parametrize("mutate", sorted(MUTATIONS))
@given(data=st.data())
def test_mutations_are_rejected_with_the_right_rule(  # type: ignore[no-untyped-def]
    mutate: str, data: st.DataObject, generator_names, sizes, schedule_of
) -> None:
    """A mutated valid schedule of any generator raises ScheduleError with the expected rule."""
    s = _draw_schedule(data, generator_names, sizes, schedule_of)
    validate(s)
    result = MUTATIONS[mutate](s, data)
    if result is None:
        # every valid schedule runs F(s, j) before the backward of (s, j) on one rank
        assert mutate != "swap_across_dependency"
        return
    mutated, rule = result
    err = _rule(mutated)
    assert err.rule == rule, err.headline
    assert err.grid


# --- against a naive reference ----------------------------------------------------------------

def reference(s: Schedule) -> tuple[str, int | None, int | None] | None:
    """The validator's rules written the slow, obvious way: (rule, rank, position) or None."""
    spec = s.spec
    S, m = spec.num_stages, spec.num_microbatches
    seen: dict[Action, tuple[int, int]] = {}
    for r, i, a in s.actions():
        if not (0 <= a.stage < S and 0 <= a.mb < m):
            return "range", r, i
        if spec.rank_of(a.stage) != r:
            return "placement", r, i
        if a in seen:
            return "duplicate", r, i
        seen[a] = (r, i)
    for r, i, a in s.actions():
        if a.kind is BW:
            for other in (B, W):
                if Action(a.stage, other, a.mb) in seen:
                    return ("split-or-fused", *seen[Action(a.stage, other, a.mb)])
        elif a.kind in (B, W) and Action(a.stage, W if a.kind is B else B, a.mb) not in seen:
            return "split-or-fused", r, i
    for st_ in range(S):
        for j in range(m):
            has_back = Action(st_, B, j) in seen or Action(st_, BW, j) in seen
            if Action(st_, F, j) not in seen or not has_back:
                return "missing", spec.rank_of(st_), None
    # Run any rank whose head has its dependencies done, until nothing moves.
    done: set[tuple[Pass, int, int]] = set()
    pos = [0] * spec.num_ranks
    moved = True
    while moved:
        moved = False
        for r, prog in enumerate(s.programs):
            while pos[r] < len(prog):
                a = prog[pos[r]]
                k, st_, j = a.kind, a.stage, a.mb
                if k is F:
                    ok = st_ == 0 or (F, st_ - 1, j) in done
                elif k is W:
                    ok = (B, st_, j) in done
                else:
                    ok = (F, st_, j) in done and (st_ == S - 1 or (B, st_ + 1, j) in done)
                if not ok:
                    break
                done.add((F if k is F else W if k is W else B, st_, j))
                pos[r] += 1
                moved = True
    stuck = [r for r, prog in enumerate(s.programs) if pos[r] < len(prog)]
    if not stuck:
        return None

    def first_unmet(a: Action) -> tuple[int, int]:
        """Where the first dependency of ``a`` that did not run sits (rank, position)."""
        k, st_, j = a.kind, a.stage, a.mb
        if k is F:
            wants = [(F, st_ - 1, j)]
        elif k is W:
            wants = [(B, st_, j)]
        else:
            wants = [(F, st_, j)] + ([(B, st_ + 1, j)] if st_ < S - 1 else [])
        want = next(w for w in wants if w not in done)
        return next((r, i) for r, i, b in s.actions()
                    if b.stage == want[1] and b.mb == want[2]
                    and (b.kind is want[0] or (want[0] is B and b.kind is BW)))

    # A root waits for a pass queued behind a head; one waiting on its own program first,
    # then the lowest rank.
    unmet = {r: first_unmet(s.programs[r][pos[r]]) for r in stuck}
    own = [r for r in stuck if unmet[r][0] == r]
    roots = [r for r in stuck if unmet[r] not in {(q, pos[q]) for q in stuck}]
    r = min(own or roots or stuck)
    return "dependency", r, pos[r]


@given(data=st.data())
def test_validator_agrees_with_reference_on_random_edits(  # type: ignore[no-untyped-def]
    data: st.DataObject, generator_names, sizes, schedule_of
) -> None:
    """After 1-3 random mutations, validate() matches the naive reference exactly (rule, rank,
    position) and never raises anything but ScheduleError."""
    s = _draw_schedule(data, generator_names, sizes, schedule_of)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        if not s.num_actions:
            break  # everything dropped
        mutate = data.draw(st.sampled_from(sorted(MUTATIONS)), label="mutation")
        result = MUTATIONS[mutate](s, data)
        if result is not None:
            s = result[0]
    expected = reference(s)
    try:
        validate(s)
        got = None
    except ScheduleError as e:
        got = (e.rule, e.rank, e.position)
    event(f"rule: {got[0] if got else None}")
    assert got == expected


@given(data=st.data())
def test_validator_agrees_with_reference_on_random_swaps(  # type: ignore[no-untyped-def]
    data: st.DataObject, generator_names, sizes, schedule_of
) -> None:
    """Random swaps within ranks (harmless or deadlocking) give the reference's verdict,
    including which blocked rank is named as the root of a deadlock."""
    s = _draw_schedule(data, generator_names, sizes, schedule_of)
    for _ in range(data.draw(st.integers(1, 4), label="swaps")):
        r, i = _pick(data, s)
        k = data.draw(st.integers(0, len(s.programs[r]) - 1), label="with")
        prog = list(s.programs[r])
        prog[i], prog[k] = prog[k], prog[i]
        s = _replace(s, r, prog)
    expected = reference(s)
    try:
        validate(s)
        got = None
    except ScheduleError as e:
        got = (e.rule, e.rank, e.position)
    event(f"verdict: {got[0] if got else 'valid'}")
    assert got == expected
