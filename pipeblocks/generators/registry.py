"""The registry of schedule generators, by name.

A generator is a pure function ``spec -> Schedule`` registered with the placement it needs and
the stages per rank it takes by default. Family modules register themselves on import; this
package imports every module beside it, so a new family needs no edit here.

    >>> sorted(names())[:3]
    ['1f1b', '1f1b-v', 'dualpipe-v']
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError
from pipeblocks.ir.bulk import no_gc
from pipeblocks.ir.recompute import with_recompute
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["Generator", "register", "get", "names", "generators", "generate", "recomputed"]

GenerateFn = Callable[[PipelineSpec], Schedule]

# The largest num_stages * num_microbatches a generator is asked to build: about 3M passes,
# tens of seconds and a few GB. p=1024, m=1024 fits; p=10**20 fails at once instead of hanging.
MAX_PAIRS = 2**20


@dataclass(frozen=True, slots=True)
class Generator:
    """A named schedule family.

    ``stages_per_rank`` is the default v; ``fixed_stages_per_rank`` says v cannot change.
    """

    name: str
    fn: GenerateFn
    placement: Placement
    stages_per_rank: int
    fixed_stages_per_rank: bool
    summary: str
    source: str

    def spec(
        self, num_ranks: int, num_microbatches: int, stages_per_rank: int | None = None
    ) -> PipelineSpec:
        """The spec this generator runs on, with its default stages per rank."""
        _expect_sizes("Generator.spec", num_ranks, num_microbatches, stages_per_rank)
        v = self.stages_per_rank if stages_per_rank is None else stages_per_rank
        if self.fixed_stages_per_rank and v != self.stages_per_rank:
            raise SpecError(
                f"{self.name} needs stages_per_rank == {self.stages_per_rank} (got {v}); "
                f"drop --stages-per-rank or set it to {self.stages_per_rank}"
            )
        return PipelineSpec(num_ranks, num_microbatches, v, self.placement)

    def __call__(self, spec: PipelineSpec) -> Schedule:
        expect(self.name, "spec", spec, PipelineSpec)
        if spec.placement is not self.placement:
            raise SpecError(
                f"{self.name} needs placement '{self.placement.value}' (got "
                f"'{spec.placement.value}'); build the spec with Generator.spec()"
            )
        self.spec(spec.num_ranks, spec.num_microbatches, spec.stages_per_rank)
        pairs = spec.num_stages * spec.num_microbatches
        if pairs > MAX_PAIRS:  # refuse at once what would take hours and all memory to build
            size = f"{pairs:.3g}" if pairs < 10**300 else f"about 10**{len(str(pairs)) - 1}"
            raise SpecError(
                f"a schedule for {spec.describe()} has {size} (stage, microbatch) pairs, "
                f"more than the {MAX_PAIRS:,} pipeblocks builds (about 3 passes each); use "
                f"fewer ranks, stages per rank or microbatches"
            )
        return self.fn(spec).renamed(self.name)


_REGISTRY: dict[str, Generator] = {}


def register(
    name: str,
    *,
    placement: Placement = Placement.LOOP,
    stages_per_rank: int = 1,
    fixed_stages_per_rank: bool = True,
    summary: str = "",
    source: str = "",
) -> Callable[[GenerateFn], GenerateFn]:
    """Decorator: add ``fn`` to the registry under ``name``."""

    def deco(fn: GenerateFn) -> GenerateFn:
        if name in _REGISTRY:
            raise SpecError(f"generator {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().split("\n", 1)[0]
        _REGISTRY[name] = Generator(
            name, fn, placement, stages_per_rank, fixed_stages_per_rank, summary or doc, source
        )
        return fn

    return deco


def get(name: str) -> Generator:
    """The generator called ``name``; an unknown name lists the known ones. ``NAME-r`` is
    ``NAME`` with every stage recomputed (:func:`recomputed`; ``1f1b-r`` is the papers'
    1F1B-R)."""
    expect("get", "name", name, str)
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        if name.endswith("-r") and name[:-2] in _REGISTRY:
            return recomputed(_REGISTRY[name[:-2]])
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(
            f"unknown schedule {name!r}; {hint}known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def recomputed(base: Generator) -> Generator:
    """``base`` with full recomputation: its programs, every stage keeping only its input
    between F and B (:mod:`pipeblocks.ir.recompute`). Not listed by :func:`names`: a variant
    of every family, reached as ``NAME-r``. The grid marks the recomputed backwards:

    >>> s = generate("1f1b-r", num_ranks=2, num_microbatches=3)
    >>> sorted(s.recompute)
    [0, 1]
    >>> print(s)
    rank 0 |   F0   F1 BW0*   F2 BW1* BW2*
    rank 1 |   F0 BW0*   F1 BW1*   F2 BW2*
    """
    def fn(spec: PipelineSpec) -> Schedule:
        return with_recompute(base.fn(spec))

    return dataclasses.replace(
        base, name=f"{base.name}-r", fn=fn,
        summary=f"{base.summary} (full recomputation: keeps stage inputs only)",
        source=f"{base.source}; recomputation as in Megatron-LM's 1F1B-R" if base.source
        else "recomputation as in Megatron-LM's 1F1B-R")


# Listing order: the classics, Zero Bubble, the V shapes, then any other name alphabetically.
# Fixed here so that listings, tables and docs do not depend on which module was imported first.
_ORDER = ("gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zb-h2", "zb-v", "v-min",
          "v-half", "v-zb", "1f1b-v", "dualpipe-v")


def _rank(name: str) -> tuple[int, str]:
    return (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)


def names() -> list[str]:
    """Every registered name, in listing order (the built-in families first)."""
    _load()
    return sorted(_REGISTRY, key=_rank)


def generators() -> list[Generator]:
    """Every registered generator, in the order of :func:`names`."""
    return [_REGISTRY[n] for n in names()]


def generate(
    name: str, num_ranks: int, num_microbatches: int, stages_per_rank: int | None = None
) -> Schedule:
    """Make the schedule ``name`` for p ranks and m microbatches (v defaults per generator)."""
    expect("generate", "name", name, str)
    _expect_sizes("generate", num_ranks, num_microbatches, stages_per_rank)
    gen = get(name)
    spec = gen.spec(num_ranks, num_microbatches, stages_per_rank)
    with no_gc():  # a few objects per pass, no cycles: see pipeblocks.ir.bulk
        return gen(spec)


def _expect_sizes(func: str, num_ranks: object, num_microbatches: object,
                  stages_per_rank: object) -> None:
    """The three sizes are ints (v may be None): checked before any rule compares them."""
    expect(func, "num_ranks", num_ranks, int)
    expect(func, "num_microbatches", num_microbatches, int)
    expect(func, "stages_per_rank", stages_per_rank, int, none=True)


def _load() -> None:
    # The modules beside this one, found by path: importing the package here would make
    # registry and package import each other (tests/test_import_graph.py forbids cycles).
    import importlib
    import pkgutil
    from pathlib import Path

    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in ("registry",):
            importlib.import_module(f"{package}.{info.name}")
