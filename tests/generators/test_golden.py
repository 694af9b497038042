"""Golden ASCII grids of the generators (p = 2..4) and their constraint errors.

A grid changes only when a generator's rule changes. The cases in HAND were worked out by hand
from the rule in the generator's docstring (docs/design.md, "Generation rules", for the
published ones) and agree with it; the rest record output that the property tests
(test_properties.py) prove valid and on its closed forms.
"""

from __future__ import annotations

import re
import textwrap

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, get
from pipeblocks.ir import PipelineSpec, Placement, validate

Case = tuple[str, int, int, int | None]

HAND: set[Case] = {
    ("interleaved-1f1b", 2, 4, 2),
    ("interleaved-1f1b", 3, 3, 2),
    ("zb-h1", 3, 4, None),
    ("zb-h2", 2, 3, None),
    ("zb-h2", 3, 5, None),
    ("zb-v", 2, 3, None),
    ("1f1b-v", 2, 2, None),
    ("1f1b-v", 3, 3, None),
    ("dualpipe-v", 2, 4, None),
}

GOLDEN: dict[Case, str] = {
    ("interleaved-1f1b", 2, 4, 2): """
        rank 0 |  0F0  0F1  2F0  2F1  0F2 2BW0  0F3 2BW1  2F2 0BW0  2F3 0BW1 2BW2 2BW3 0BW2 0BW3
        rank 1 |  1F0  1F1  3F0 3BW0  3F1 3BW1  1F2 1BW0  1F3 1BW1  3F2 3BW2  3F3 3BW3 1BW2 1BW3
    """,
    ("interleaved-1f1b", 3, 3, 2): """
        rank 0 |  0F0  0F1  0F2  3F0  3F1  3F2 3BW0 3BW1 3BW2 0BW0 0BW1 0BW2
        rank 1 |  1F0  1F1  1F2  4F0  4F1  4F2 4BW0 4BW1 4BW2 1BW0 1BW1 1BW2
        rank 2 |  2F0  2F1  2F2  5F0 5BW0  5F1 5BW1  5F2 5BW2 2BW0 2BW1 2BW2
    """,
    ("interleaved-1f1b", 4, 8, 2): """
        rank 0 |  0F0  0F1  0F2  0F3  4F0  4F1  4F2  4F3  0F4  0F5  0F6 4BW0  0F7 4BW1  4F4 4BW2  4F5 4BW3  4F6 0BW0  4F7 0BW1 0BW2 0BW3 4BW4 4BW5 4BW6 4BW7 0BW4 0BW5 0BW6 0BW7
        rank 1 |  1F0  1F1  1F2  1F3  5F0  5F1  5F2  5F3  1F4 5BW0  1F5 5BW1  1F6 5BW2  1F7 5BW3  5F4 1BW0  5F5 1BW1  5F6 1BW2  5F7 1BW3 5BW4 5BW5 5BW6 5BW7 1BW4 1BW5 1BW6 1BW7
        rank 2 |  2F0  2F1  2F2  2F3  6F0  6F1  6F2 6BW0  6F3 6BW1  2F4 6BW2  2F5 6BW3  2F6 2BW0  2F7 2BW1  6F4 2BW2  6F5 2BW3  6F6 6BW4  6F7 6BW5 6BW6 6BW7 2BW4 2BW5 2BW6 2BW7
        rank 3 |  3F0  3F1  3F2  3F3  7F0 7BW0  7F1 7BW1  7F2 7BW2  7F3 7BW3  3F4 3BW0  3F5 3BW1  3F6 3BW2  3F7 3BW3  7F4 7BW4  7F5 7BW5  7F6 7BW6  7F7 7BW7 3BW4 3BW5 3BW6 3BW7
    """,
    ("interleaved-1f1b", 2, 2, 3): """
        rank 0 |  0F0  0F1  2F0  2F1  4F0  4F1 4BW0 4BW1 2BW0 2BW1 0BW0 0BW1
        rank 1 |  1F0  1F1  3F0  3F1  5F0 5BW0  5F1 5BW1 3BW0 3BW1 1BW0 1BW1
    """,
    ("looped-bfs", 2, 3, 2): """
        rank 0 |  0F0  0F1  0F2  2F0  2F1  2F2 2BW0 2BW1 2BW2 0BW0 0BW1 0BW2
        rank 1 |  1F0  1F1  1F2  3F0  3F1  3F2 3BW0 3BW1 3BW2 1BW0 1BW1 1BW2
    """,
    ("looped-bfs", 3, 2, 2): """
        rank 0 |  0F0  0F1  3F0  3F1 3BW0 3BW1 0BW0 0BW1
        rank 1 |  1F0  1F1  4F0  4F1 4BW0 4BW1 1BW0 1BW1
        rank 2 |  2F0  2F1  5F0  5F1 5BW0 5BW1 2BW0 2BW1
    """,
    ("looped-bfs", 4, 2, 1): """
        rank 0 |  F0  F1 BW0 BW1
        rank 1 |  F0  F1 BW0 BW1
        rank 2 |  F0  F1 BW0 BW1
        rank 3 |  F0  F1 BW0 BW1
    """,
    ("zb-h1", 2, 3, None): """
        rank 0 | F0 F1 B0 W0 F2 B1 W1 B2 W2
        rank 1 | F0 B0 F1 B1 W0 F2 B2 W1 W2
    """,
    ("zb-h1", 3, 4, None): """
        rank 0 | F0 F1 F2 B0 W0 F3 B1 W1 B2 W2 B3 W3
        rank 1 | F0 F1 B0 F2 B1 W0 F3 B2 W1 B3 W2 W3
        rank 2 | F0 B0 F1 B1 F2 B2 W0 F3 B3 W1 W2 W3
    """,
    ("zb-h1", 4, 4, None): """
        rank 0 | F0 F1 F2 F3 B0 W0 B1 W1 B2 W2 B3 W3
        rank 1 | F0 F1 F2 B0 F3 B1 W0 B2 W1 B3 W2 W3
        rank 2 | F0 F1 B0 F2 B1 F3 B2 W0 B3 W1 W2 W3
        rank 3 | F0 B0 F1 B1 F2 B2 F3 B3 W0 W1 W2 W3
    """,
    ("zb-h2", 2, 3, None): """
        rank 0 | F0 F1 F2 B0 W0 B1 W1 B2 W2
        rank 1 | F0 B0 F1 B1 F2 B2 W0 W1 W2
    """,
    ("zb-h2", 3, 5, None): """
        rank 0 | F0 F1 F2 F3 F4 B0 W0 B1 W1 B2 W2 B3 W3 B4 W4
        rank 1 | F0 F1 F2 B0 F3 B1 F4 B2 W0 B3 W1 B4 W2 W3 W4
        rank 2 | F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 W0 W1 W2 W3 W4
    """,
    ("zb-h2", 4, 7, None): """
        rank 0 | F0 F1 F2 F3 F4 F5 F6 B0 W0 B1 W1 B2 W2 B3 W3 B4 W4 B5 W5 B6 W6
        rank 1 | F0 F1 F2 F3 F4 B0 F5 B1 F6 B2 W0 B3 W1 B4 W2 B5 W3 B6 W4 W5 W6
        rank 2 | F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 W0 B5 W1 B6 W2 W3 W4 W5 W6
        rank 3 | F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 W0 W1 W2 W3 W4 W5 W6
    """,
    ("zb-v", 2, 3, None): """
        rank 0 | 0F0 0F1 0F2 3F0 3B0 3W0 3F1 3B1 3W1 0B0 0W0 3F2 3B2 3W2 0B1 0W1 0B2 0W2
        rank 1 | 1F0 2F0 1F1 2F1 2B0 2W0 1F2 1B0 1W0 2F2 2B1 2W1 1B1 2B2 1B2 1W1 2W2 1W2
    """,
    ("zb-v", 3, 5, None): """
        rank 0 | 0F0 0F1 0F2 0F3 0F4 5F0 5B0 5W0 5F1 5B1 5W1 5F2 5B2 5W2 0B0 0W0 5F3 5B3 5W3 0B1 0W1 5F4 5B4 5W4 0B2 0W2 0B3 0W3 0B4 0W4
        rank 1 | 1F0 1F1 1F2 4F0 1F3 4F1 4B0 4W0 4F2 4B1 4W1 1F4 1B0 1W0 4F3 4B2 4W2 1B1 1W1 4F4 4B3 4W3 1B2 4B4 1B3 1W2 1B4 1W3 4W4 1W4
        rank 2 | 2F0 3F0 2F1 3F1 2F2 3F2 3B0 3W0 2F3 2B0 2W0 3F3 3B1 3W1 2F4 2B1 2W1 3F4 3B2 3W2 2B2 3B3 2B3 3B4 2B4 2W2 3W3 3W4 2W3 2W4
    """,
    ("zb-v", 4, 2, None): """
        rank 0 | 0F0 0F1 7F0 7B0 7W0 7F1 7B1 7W1 0B0 0W0 0B1 0W1
        rank 1 | 1F0 1F1 6F0 6F1 6B0 6W0 6B1 6W1 1B0 1W0 1B1 1W1
        rank 2 | 2F0 2F1 5F0 5F1 5B0 5W0 5B1 5W1 2B0 2W0 2B1 2W1
        rank 3 | 3F0 4F0 3F1 4F1 4B0 4W0 3B0 3W0 4B1 4W1 3B1 3W1
    """,
    ("1f1b-v", 2, 2, None): """
        rank 0 |  0F0  3F0 3BW0  0F1  3F1 3BW1 0BW0 0BW1
        rank 1 |  1F0  2F0  1F1  2F1 2BW0 1BW0 2BW1 1BW1
    """,
    ("1f1b-v", 3, 3, None): """
        rank 0 |  0F0  5F0  0F1 5BW0  5F1  0F2 5BW1  5F2 5BW2 0BW0 0BW1 0BW2
        rank 1 |  1F0  4F0  1F1  4F1 4BW0  1F2  4F2 4BW1 1BW0 4BW2 1BW1 1BW2
        rank 2 |  2F0  3F0  2F1  3F1  2F2  3F2 3BW0 2BW0 3BW1 2BW1 3BW2 2BW2
    """,
    ("1f1b-v", 4, 4, None): """
        rank 0 |  0F0  0F1  7F0 7BW0  0F2  7F1 7BW1  0F3  7F2 7BW2  7F3 7BW3 0BW0 0BW1 0BW2 0BW3
        rank 1 |  1F0  6F0  1F1 6BW0  6F1  1F2 6BW1  6F2  1F3 6BW2  6F3 1BW0 6BW3 1BW1 1BW2 1BW3
        rank 2 |  2F0  5F0  2F1  5F1 5BW0  2F2  5F2 5BW1  2F3 2BW0  5F3 5BW2 2BW1 5BW3 2BW2 2BW3
        rank 3 |  3F0  4F0  3F1  4F1  3F2  4F2 4BW0 3BW0  3F3  4F3 4BW1 3BW1 4BW2 3BW2 4BW3 3BW3
    """,
    ("dualpipe-v", 2, 4, None): """
        rank 0 |  0F0  0F1  0F2  3F0  3B0  3W0  3F1  0F3 3BW1  3F2 0BW0 3BW2  3F3 0BW1 3BW3  0B2  0W2  0B3  0W3
        rank 1 |  1F0  2F0  1F1  2F1  1F2 2BW0  2F2 1BW0  1F3 2BW1  2F3 1BW1 2BW2 1BW2  2B3  1B3  2W3  1W3
    """,
    ("dualpipe-v", 3, 6, None): """
        rank 0 |  0F0  0F1  0F2  0F3  0F4  5F0  5B0  5W0  5F1  5B1  5W1  5F2  0F5 5BW2  5F3 0BW0 5BW3  5F4 0BW1 5BW4  5F5 0BW2 5BW5  0B3  0W3  0B4  0W4  0B5  0W5
        rank 1 |  1F0  1F1  1F2  4F0  1F3  4F1  4B0  4W0  4F2  1F4 4BW1  4F3 1BW0  1F5 4BW2  4F4 1BW1 4BW3  4F5 1BW2 4BW4 1BW3  4B5  1B4  4W5  1B5  1W4  1W5
        rank 2 |  2F0  3F0  2F1  3F1  2F2  3F2  2F3 3BW0  3F3 2BW0  2F4 3BW1  3F4 2BW1  2F5 3BW2  3F5 2BW2 3BW3 2BW3 3BW4  2B4  3B5  2B5  2W4  3W5  2W5
    """,
    ("dualpipe-v", 4, 8, None): """
        rank 0 |  0F0  0F1  0F2  0F3  0F4  0F5  0F6  7F0  7B0  7W0  7F1  7B1  7W1  7F2  7B2  7W2  7F3  0F7 7BW3  7F4 0BW0 7BW4  7F5 0BW1 7BW5  7F6 0BW2 7BW6  7F7 0BW3 7BW7  0B4  0W4  0B5  0W5  0B6  0W6  0B7  0W7
        rank 1 |  1F0  1F1  1F2  1F3  1F4  6F0  1F5  6F1  6B0  6W0  6F2  6B1  6W1  6F3  1F6 6BW2  6F4 1BW0  1F7 6BW3  6F5 1BW1 6BW4  6F6 1BW2 6BW5  6F7 1BW3 6BW6 1BW4  6B7  1B5  6W7  1B6  1W5  1B7  1W6  1W7
        rank 2 |  2F0  2F1  2F2  5F0  2F3  5F1  2F4  5F2  5B0  5W0  5F3  2F5 5BW1  5F4 2BW0  2F6 5BW2  5F5 2BW1  2F7 5BW3  5F6 2BW2 5BW4  5F7 2BW3 5BW5 2BW4 5BW6  2B5  5B7  2B6  2W5  2B7  5W7  2W6  2W7
        rank 3 |  3F0  4F0  3F1  4F1  3F2  4F2  3F3  4F3  3F4 4BW0  4F4 3BW0  3F5 4BW1  4F5 3BW1  3F6 4BW2  4F6 3BW2  3F7 4BW3  4F7 3BW3 4BW4 3BW4 4BW5 3BW5  4B6  3B6  4B7  3B7  4W6  3W6  4W7  3W7
    """,
}


@pytest.mark.parametrize("case", list(GOLDEN), ids=lambda c: f"{c[0]}-p{c[1]}-m{c[2]}-v{c[3]}")
def test_golden_grid(case: Case) -> None:
    """The generator's program order at a small size is exactly the recorded grid."""
    name, p, m, v = case
    schedule = generate(name, p, m, v)
    validate(schedule)
    assert str(schedule) == textwrap.dedent(GOLDEN[case]).strip()


def test_hand_cases_are_golden() -> None:
    """Every hand-derived case is one of the recorded grids."""
    assert set(GOLDEN) >= HAND


# --- constraint errors: each names the rule, the values and the fix --------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("interleaved-1f1b", 4, 10, 2),
            "interleaved-1f1b needs num_microbatches % num_ranks == 0 (got m=10, p=4); "
            "use m=8 or m=12",
        ),
        (
            ("interleaved-1f1b", 4, 2, 2),
            "interleaved-1f1b needs num_microbatches % num_ranks == 0 (got m=2, p=4); use m=4",
        ),
        (
            ("interleaved-1f1b", 4, 8, 1),
            "interleaved-1f1b needs stages_per_rank >= 2 (got v=1); use --stages-per-rank 2, "
            "or the '1f1b' schedule for one stage per rank",
        ),
        (
            ("dualpipe-v", 4, 7, None),
            "dualpipe-v needs num_microbatches >= 2 * num_ranks (got m=7, p=4); use m=8 or more",
        ),
        (
            ("zb-v", 4, 8, 3),
            "zb-v needs stages_per_rank == 2 (got 3); drop --stages-per-rank or set it to 2",
        ),
        (
            ("zb-h2", 4, 8, 2),
            "zb-h2 needs stages_per_rank == 1 (got 2); drop --stages-per-rank or set it to 1",
        ),
    ],
)
def test_constraint_error_names_rule_values_and_fix(
    args: tuple[str, int, int, int | None], message: str
) -> None:
    """A spec outside a generator's constraint raises SpecError with rule, values and fix."""
    with pytest.raises(SpecError, match=re.escape(message)):
        generate(*args)


@pytest.mark.parametrize("name", ["zb-v", "1f1b-v", "dualpipe-v"])
def test_v_generators_refuse_a_loop_spec(name: str) -> None:
    """Called directly on a loop spec, a V generator says which placement it needs."""
    fn = get(name).fn
    with pytest.raises(SpecError, match=re.escape(f"{name} needs placement 'v' (got 'loop')")):
        fn(PipelineSpec(4, 8, 2))


@pytest.mark.parametrize("name", ["interleaved-1f1b", "looped-bfs"])
def test_loop_generators_refuse_a_v_spec(name: str) -> None:
    """Called directly on a V spec, a loop generator says which placement it needs."""
    fn = get(name).fn
    with pytest.raises(SpecError, match=re.escape(f"{name} needs placement 'loop' (got 'v')")):
        fn(PipelineSpec(4, 8, 2, Placement.V))


@pytest.mark.parametrize("name", ["zb-h1", "zb-h2"])
def test_zb_handcrafted_refuse_more_stages(name: str) -> None:
    """Called directly with two stages per rank, ZB-H1/H2 say they need one."""
    with pytest.raises(SpecError, match=re.escape(f"{name} needs placement 'loop' with stages_per_rank == 1")):
        get(name).fn(PipelineSpec(4, 8, 2))


@pytest.mark.parametrize(
    ("name", "p", "smallest"),
    [("dualpipe-v", 3, 6), ("interleaved-1f1b", 3, 3)],
)
def test_smallest_legal_m_is_accepted(name: str, p: int, smallest: int) -> None:
    """The constraint's boundary is inclusive: the smallest legal m generates and validates."""
    validate(generate(name, p, smallest))
    with pytest.raises(SpecError):
        generate(name, p, smallest - 1)
