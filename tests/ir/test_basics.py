"""The IR's building stones: passes and actions, the spec and its placements, schedules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import ArgTypeError, SpecError
from pipeblocks.ir import Action, Pass, PipelineSpec, Placement, Schedule

specs = st.builds(
    lambda p, m, v, pl: PipelineSpec(p, m, 2 if pl is Placement.V else v, pl),
    st.integers(1, 12), st.integers(1, 40), st.integers(1, 4), st.sampled_from(Placement),
)


@given(st.integers(0, 10**6), st.sampled_from(Pass), st.integers(0, 10**6))
def test_action_text_round_trip(stage: int, kind: Pass, mb: int) -> None:
    """str(Action) is <stage><letter><mb> and Action.parse reads it back exactly."""
    a = Action(stage, kind, mb)
    assert str(a) == f"{stage}{kind.value}{mb}"
    assert Action.parse(str(a)) == a


@pytest.mark.parametrize("text", ["", "F0", "0F", "0X1", "0 F 1", "0FB1", "-1F0", "0f0"])
def test_action_parse_rejects_malformed(text: str) -> None:
    """Malformed action text is a SpecError that shows the expected form."""
    with pytest.raises(SpecError, match="<stage><F|B|W|BW><microbatch>"):
        Action.parse(text)


@pytest.mark.parametrize("text", ["\u0663F\u0665", "0F\uff13", "\u0967BW0", "1" * 19 + "F0",
                                  "1" * 5000 + "F0"])
def test_action_parse_takes_ascii_digits_only(text: str) -> None:
    """Other scripts' digits and overlong numbers are refused, as the file readers refuse them
    (int() would read '\u0663' as 3, and a 5000-digit number is its bare ValueError)."""
    with pytest.raises(SpecError, match=r"ASCII digits, at most 18 each"):
        Action.parse(text)


def test_pass_input_gradient_flag() -> None:
    """Exactly B and BW produce the gradient sent to the previous stage."""
    assert {k for k in Pass if k.frees_input_grad} == {Pass.B, Pass.BW}


@given(specs)
def test_placement_maps_every_stage_to_one_rank(spec: PipelineSpec) -> None:
    """stages_of and rank_of agree, cover every stage once, and local_of is the slot index."""
    seen = []
    for rank in range(spec.num_ranks):
        stages = spec.stages_of(rank)
        assert len(stages) == spec.stages_per_rank
        for slot, s in enumerate(stages):
            assert spec.rank_of(s) == rank
            assert spec.local_of(s) == slot
        seen += stages
    assert sorted(seen) == list(range(spec.num_stages))


def test_v_placement_by_hand() -> None:
    """V placement, p=3: stages 0..5 sit on ranks 0,1,2,2,1,0 (down and back up)."""
    spec = PipelineSpec(3, 4, 2, "v")
    assert [spec.rank_of(s) for s in range(6)] == [0, 1, 2, 2, 1, 0]
    loop = PipelineSpec(3, 4, 2, "loop")
    assert [loop.rank_of(s) for s in range(6)] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 4), "num_ranks must be >= 1 .*-p 1"),
        ((4, 0), "num_microbatches must be >= 1 .*-m 1"),
        ((4, 4, 0), "stages_per_rank must be >= 1"),
        ((4, 4, 3, "v"), "placement 'v' holds exactly 2 stages per rank .*got stages_per_rank=3"),
        ((4, 4, 1, "zigzag"), "unknown placement 'zigzag'; use one of: loop, v"),
    ],
)
def test_spec_errors_name_rule_value_and_fix(args: tuple, match: str) -> None:
    """Bad specs raise SpecError naming the field, the value and a fix."""
    with pytest.raises(SpecError, match=match):
        PipelineSpec(*args)


@pytest.mark.parametrize("args", [(4.0, 4), (True, 4), ("4", 4)])
def test_spec_refuses_sizes_that_are_not_ints(args: tuple) -> None:
    """A size that is not an int (a float, a bool, a string) is an ArgTypeError naming it."""
    with pytest.raises(ArgTypeError, match=r"PipelineSpec\(\): num_ranks must be an int \(got"):
        PipelineSpec(*args)


@pytest.mark.parametrize("stage", [-1, 8])
def test_rank_of_rejects_stages_out_of_range(stage: int) -> None:
    """rank_of and local_of refuse stages outside 0..S-1."""
    spec = PipelineSpec(4, 2, 2)
    with pytest.raises(SpecError, match="out of range 0..7"):
        spec.rank_of(stage)
    with pytest.raises(SpecError, match="out of range"):
        spec.local_of(stage)


def test_schedule_needs_one_program_per_rank() -> None:
    """A schedule with the wrong number of programs is refused with both counts."""
    with pytest.raises(SpecError, match="3 ranks but 2 programs"):
        Schedule(PipelineSpec(3, 1), ((), ()))


def test_schedule_is_data_with_value_equality() -> None:
    """Programs become tuples; equality ignores the name; actions() walks rank by rank."""
    spec = PipelineSpec(2, 1)
    progs = [[Action(0, Pass.F, 0), Action(0, Pass.BW, 0)], [Action(1, Pass.F, 0)]]
    s = Schedule.from_lists(spec, progs, name="a")
    assert s == Schedule(spec, tuple(map(tuple, progs)), name="b")
    assert isinstance(s.programs[0], tuple)
    assert s.num_actions == 3
    assert [(r, i, str(a)) for r, i, a in s.actions()] == [
        (0, 0, "0F0"), (0, 1, "0BW0"), (1, 0, "1F0")]
    assert s.renamed("c").name == "c" and s.renamed("c") == s
