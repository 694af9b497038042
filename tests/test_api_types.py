"""The public API refuses wrong argument types with an ArgTypeError naming the argument."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pipeblocks as pb
from pipeblocks.errors import ArgTypeError, PipeblocksError, SpecError
from pipeblocks.planner import Cluster, ModelSpec, Space

_SCHEDULE = pb.generate("1f1b", 2, 2)

# Each public callable with good arguments by name, and the types each argument accepts.
CASES: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, tuple[type, ...]]]] = {
    "generate": (pb.generate,
                 {"name": "1f1b", "num_ranks": 2, "num_microbatches": 2, "stages_per_rank": None},
                 {"name": (str,), "num_ranks": (int,), "num_microbatches": (int,),
                  "stages_per_rank": (int, type(None))}),
    "get": (pb.get, {"name": "1f1b"}, {"name": (str,)}),
    "validate": (pb.validate, {"schedule": _SCHEDULE}, {"schedule": (pb.Schedule,)}),
    "simulate": (pb.simulate, {"schedule": _SCHEDULE, "costs": None, "validate": True},
                 {"schedule": (pb.Schedule,), "costs": (pb.UniformCosts, type(None)),
                  "validate": (bool,)}),
    "Action": (pb.Action, {"stage": 0, "kind": pb.Pass.F, "mb": 0},
               {"stage": (int,), "kind": (pb.Pass,), "mb": (int,)}),
    "Action.parse": (pb.Action.parse, {"text": "0F0"}, {"text": (str,)}),
    "PipelineSpec": (pb.PipelineSpec,
                     {"num_ranks": 2, "num_microbatches": 2, "stages_per_rank": 1,
                      "placement": "loop"},
                     {"num_ranks": (int,), "num_microbatches": (int,),
                      "stages_per_rank": (int,), "placement": (pb.Placement, str)}),
    "Schedule": (pb.Schedule, {"spec": _SCHEDULE.spec, "programs": _SCHEDULE.programs,
                               "name": ""},
                 {"spec": (pb.PipelineSpec,), "programs": (tuple,), "name": (str,)}),
    "UniformCosts": (pb.UniformCosts, {"f": 1.0, "b": 1.0, "w": 1.0, "comm": 0.0, "mem_f": 1.0,
                                       "mem_w": None},
                     {"f": (int, float), "b": (int, float), "w": (int, float),
                      "comm": (int, float), "mem_f": (int, float),
                      "mem_w": (int, float, type(None))}),
    "plan": (pb.plan, {"model": "layers=2,hidden=64,heads=2,seq=16,vocab=128", "gpus": 1,
                       "global_batch": 2, "cluster": None, "space": None},
             {"model": (str, ModelSpec), "gpus": (int, type(None)), "global_batch": (int,),
              "cluster": (Cluster, type(None)), "space": (Space, type(None))}),
}

# Values of the wrong type for some argument: scalars and a plain object (never a container,
# whose items the callee may legitimately look at first).
WRONG = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**30), st.floats(allow_nan=True),
    st.text(max_size=6), st.binary(min_size=1, max_size=4), st.builds(object),
    st.sampled_from([pb.Pass.F, pb.Placement.V, pb.PipelineSpec(2, 2), _SCHEDULE]),
)

ARGS = [(fn, arg) for fn, (_, _, accepts) in CASES.items() for arg in accepts]


def _accepted(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from(ARGS), value=WRONG)
def test_a_wrong_type_is_an_arg_type_error_naming_the_argument(
    which: tuple[str, str], value: Any
) -> None:
    """Any public callable, any argument, any wrongly typed value: ArgTypeError naming it."""
    fn_name, arg = which
    fn, good, accepts = CASES[fn_name]
    assume(not _accepted(value, accepts[arg]))
    with pytest.raises(ArgTypeError) as err:
        fn(**{**good, arg: value})
    e = err.value
    assert isinstance(e, PipeblocksError) and isinstance(e, TypeError)
    assert e.function == fn_name and e.argument == arg
    assert str(e).startswith(f"{fn_name}(): {arg} must be ")
    assert e.got == type(value).__name__ and len(str(e).splitlines()) == 1


@settings(max_examples=100, deadline=None)
@given(rank=st.integers(0, 1), item=WRONG)
def test_a_wrong_item_in_a_program_is_named_by_rank_and_position(rank: int, item: Any) -> None:
    """Schedule(spec, programs) names the bad item as programs[rank][position]."""
    programs = [list(p) for p in _SCHEDULE.programs]
    programs[rank].insert(1, item)
    with pytest.raises(ArgTypeError, match=rf"^Schedule\(\): programs\[{rank}\]\[1\] must be an "
                       r"Action \(got"):
        pb.Schedule(_SCHEDULE.spec, programs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pb.generate(None, 4, 8), "generate(): name must be a str (got None, a NoneType)"),
        (lambda: pb.Action(0, "F", 0), "Action(): kind must be a Pass (got 'F', a str); use "
         "pb.Pass.F"),
        (lambda: pb.simulate(_SCHEDULE.spec), "simulate(): schedule must be a Schedule (got a "
         "PipelineSpec); make one with pb.generate("),
        (lambda: pb.generate("v-half", 4, 8, "2"), "generate(): stages_per_rank must be an int "
         "or None (got '2', a str); pass a whole number, e.g. 8 or int('2')"),
        (lambda: pb.generate("1f1b", 4.0, 8), "generate(): num_ranks must be an int (got 4.0"),
        (lambda: pb.simulate(_SCHEDULE, {"f": 1}), "simulate(): costs must be a CostModel or "
         "None (got {'f': 1}, a dict)"),
    ],
)
def test_the_issue_examples_say_which_argument_and_type(call: Callable[[], Any],
                                                        message: str) -> None:
    """The cases from issue 14 give one line that names the argument and the type."""
    with pytest.raises(ArgTypeError) as err:
        call()
    assert str(err.value).startswith(message)


def test_every_public_callable_is_covered() -> None:
    """Each function and class in pipeblocks.__all__ that takes arguments is in CASES (the
    exceptions, the enums and Simulation, a result, aside)."""
    aside = {"Pass", "Placement", "Simulation", "names"}
    public = {n for n in pb.__all__ if callable(getattr(pb, n))
              and not (isinstance(getattr(pb, n), type) and issubclass(getattr(pb, n), Exception))}
    assert public - aside == set(CASES) - {"Action.parse"}


@pytest.mark.parametrize("letter", ["X", None, 1, "f"])
def test_an_unknown_pass_letter_is_a_spec_error(letter: Any) -> None:
    """Pass(x) for an unknown x names the letters instead of Enum's bare ValueError."""
    with pytest.raises(SpecError, match=r"unknown pass .*use one of: F, B, W, BW"):
        pb.Pass(letter)
