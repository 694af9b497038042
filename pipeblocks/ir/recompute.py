"""Recomputation as schedule data: which stages keep only their input between F and B.

A stage marked for recompute runs its forward without keeping the activations its backward
needs: it keeps the stage input alone, and its B (or BW) starts by re-running the forward from
that input (once; W then uses the graph B built). The choice is part of the schedule: the JSON
format stores it, the simulator charges the extra forward and the lower memory
(:mod:`pipeblocks.sim.recompute`), the pictures mark it and the executor runs it.
docs/memory.md, "Recomputation", has the accounting.

    >>> from pipeblocks.generators import generate
    >>> s = with_recompute(generate("1f1b", 4, 8))
    >>> sorted(s.recompute), s.name
    ([0, 1, 2, 3], '1f1b-r')
    >>> sorted(with_recompute(generate("1f1b", 4, 8), [1, 2]).recompute)
    [1, 2]
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError
from pipeblocks.ir.schedule import Schedule, check_stages
from pipeblocks.ir.spec import PipelineSpec

__all__ = ["with_recompute", "check_stages", "parse_recompute", "recompute_label"]


def with_recompute(schedule: Schedule, stages: Iterable[int] | None = None) -> Schedule:
    """``schedule`` with ``stages`` (default: every stage) recomputed; the name gains ``-r``
    when every stage is (1F1B with full recomputation is the papers' ``1F1B-R``)."""
    expect("with_recompute", "schedule", schedule, Schedule)
    spec = schedule.spec
    chosen = frozenset(range(spec.num_stages)) if stages is None else check_stages(spec, stages)
    name = schedule.name
    if len(chosen) == spec.num_stages and name and not name.endswith("-r"):
        name += "-r"
    return Schedule(spec, schedule.programs, name, chosen, schedule.offload)


def parse_recompute(text: str, spec: PipelineSpec) -> frozenset[int]:
    """The CLI's ``--recompute`` value: ``all``, ``none`` or stages like ``0,3``."""
    expect("parse_recompute", "text", text, str)
    word = text.strip().lower()
    if word == "all":
        return frozenset(range(spec.num_stages))
    if word in ("none", ""):
        return frozenset()
    try:
        stages = [int(t) for t in word.split(",")]
    except ValueError:
        raise SpecError(
            f"--recompute takes all, none or stages like 0,3 (got {text!r}); write e.g. "
            f"--recompute all"
        ) from None
    return check_stages(spec, stages)


def recompute_label(schedule: Schedule) -> str:
    """A short note for headers: ``""``, ``"recompute: all stages"`` or ``"recompute: 0,3"``."""
    stages = schedule.recompute
    if not stages:
        return ""
    if len(stages) == schedule.spec.num_stages:
        return "recompute: all stages"
    return "recompute: stages " + ",".join(map(str, sorted(stages)))
