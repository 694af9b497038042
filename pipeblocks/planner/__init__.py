"""The planner: the best dp x tp x pp layout, microbatching, memory plan and schedule.

Modules: :mod:`~pipeblocks.planner.model` (parameters, FLOPs and activation bytes),
:mod:`~.measured` (a profile's measured costs as the model), :mod:`~.cluster` (GPUs,
efficiency curve, links), :mod:`~.partition` (layers to stages),
:mod:`~.pipeline` (cached simulations), :mod:`~.grid` (time and memory of every plan),
:mod:`~.memory` (activation peaks per rank), :mod:`~.report` (table, JSON, export),
:mod:`~.run` (``--run``: train the best plan here). See docs/planner.md.

    >>> import pipeblocks as pb
    >>> r = pb.plan("layers=24,hidden=2048,heads=16,seq=2048,vocab=50304", gpus=8,
    ...             global_batch=64)
    >>> r.best.fits and r.best.peak_memory_bytes <= 80e9
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError
from pipeblocks.planner.cluster import Cluster, parse_bytes
from pipeblocks.planner.grid import PLAN_SCHEDULES, SHARDINGS, Plan, Progress, Space, evaluate
from pipeblocks.planner.measured import read_model
from pipeblocks.planner.model import ModelSpec, parse_model
from pipeblocks.planner.partition import partition

__all__ = ["plan", "PlanResult", "Plan", "Space", "Cluster", "ModelSpec", "parse_model",
           "parse_bytes", "partition", "PLAN_SCHEDULES", "SHARDINGS"]


@dataclass(frozen=True, slots=True)
class PlanResult:
    """Every plan, ranked (plans that fit first, then by samples/s); what they were made for."""

    plans: tuple[Plan, ...]
    model: ModelSpec
    cluster: Cluster
    global_batch: int

    @property
    def best(self) -> Plan | None:
        """The fastest plan that fits; None when none does."""
        return self.plans[0] if self.plans and self.plans[0].fits else None

    def best_per_schedule(self) -> dict[str, Plan]:
        """Each schedule's fastest plan (one that fits where there is one)."""
        out: dict[str, Plan] = {}
        for p in self.plans:
            out.setdefault(p.schedule, p)
        return out


def plan(
    model: ModelSpec | str,
    *,
    gpus: int | None = None,
    global_batch: int,
    cluster: Cluster | None = None,
    space: Space | None = None,
    progress: Progress | None = None,
) -> PlanResult:
    """Rank every plan of ``space`` for ``model`` (a :class:`ModelSpec`, its
    ``layers=..,hidden=..`` text or the path of a model file with a profile) on ``cluster`` (or ``Cluster(gpus)``) at ``global_batch``
    sequences per step."""
    expect("plan", "model", model, (ModelSpec, str))
    expect("plan", "gpus", gpus, int, none=True)
    expect("plan", "global_batch", global_batch, int)
    expect("plan", "cluster", cluster, Cluster, none=True)
    expect("plan", "space", space, Space, none=True)
    spec = read_model(model) if isinstance(model, str) else model
    if cluster is None:
        if gpus is None:
            raise SpecError("plan() needs gpus=N or cluster=Cluster(...); give one of them")
        cluster = Cluster(gpus=gpus)
    plans = evaluate(spec, cluster, global_batch, space, progress)
    return PlanResult(tuple(plans), spec, cluster, global_batch)
