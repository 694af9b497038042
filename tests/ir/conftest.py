"""Fixtures for the IR tests: every registered generator at the small sizes it accepts."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, get, names
from pipeblocks.ir import Schedule

Size = tuple[int, int, int | None]  # (num_ranks, num_microbatches, stages_per_rank or None)


@functools.cache
def legal_sizes(name: str) -> tuple[Size, ...]:
    """The (p, m, v) in a small grid that ``name`` accepts (it raises SpecError on the rest).

    p in 1..5, m in 1..2p+1 plus 3p and 4p, v the default (and 1..3 where v may vary).
    """
    gen = get(name)
    vs: tuple[int | None, ...] = (None,) if gen.fixed_stages_per_rank else (1, 2, 3)
    out = []
    for p in range(1, 6):
        for m in sorted({*range(1, 2 * p + 2), 3 * p, 4 * p}):
            for v in vs:
                try:
                    make(name, p, m, v)
                except SpecError:
                    continue
                out.append((p, m, v))
    return tuple(out)


@functools.cache
def make(name: str, p: int, m: int, v: int | None) -> Schedule:
    """The generated schedule, cached: tests draw the same sizes often."""
    return generate(name, p, m, v)


@pytest.fixture(scope="session")
def sizes() -> Callable[[str], tuple[Size, ...]]:
    return legal_sizes


@pytest.fixture(scope="session")
def schedule_of() -> Callable[[str, int, int, int | None], Schedule]:
    return make


@pytest.fixture(scope="session")
def generator_names() -> list[str]:
    """Every registered generator that accepts at least one size of the grid."""
    return [n for n in names() if legal_sizes(n)]
