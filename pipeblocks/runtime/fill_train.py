"""Fill in the training loop: ``pipeblocks train --fill eval|side|sleep`` (docs/fill.md).

:func:`setup` gives each rank a :class:`~pipeblocks.runtime.fill.FillRunner` with the slots of
the schedule simulated under unit costs and one of three kinds of fill work:

- ``eval``: evaluation microbatches of the model being trained
  (:class:`~pipeblocks.runtime.fill_eval.EvalFill`), drained after the last step; the report
  has their losses (``fill_eval_losses``);
- ``side``: training steps of a second, rank-local small model (an MLP on random data);
- ``sleep``: tasks that only sleep ``--fill-ms`` (for measuring, with ``--emulate-ms``).

Steps alternate: even steps (the first one included: warm-up) run without fill, odd ones with
it, so one run measures both; ``fill_slowdown`` is the median step with fill over the median
without. ``fill_bubble_used`` is the fill time per fill step, all ranks, over the whole
simulated bubble (every rank's idle time: the waits before its first pass and after its last
included, all of which fill uses), in seconds: one simulated unit is ``emulate_ms * v`` ms
when emulated, else the median step without fill over the simulated makespan. Fill tasks
start only within the rank's memory headroom (:mod:`pipeblocks.runtime.fill_memory`).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeblocks.errors import SpecError
from pipeblocks.runtime.emulate import emulated_sleep
from pipeblocks.runtime.faults import store_client
from pipeblocks.runtime.fill import FillRunner, FillWork, second_model_work
from pipeblocks.runtime.fill_eval import EvalFill
from pipeblocks.runtime.fill_memory import Headroom
from pipeblocks.sim.costs import UniformCosts
from pipeblocks.sim.engine import simulate
from pipeblocks.sim.fill import place_fill

__all__ = ["FILL_KINDS", "TrainFill", "from_plan", "setup"]

FILL_KINDS = ("eval", "side", "sleep")
_ENDLESS = 100_000  # side and sleep tasks: more than any run's gaps can take


@dataclass
class TrainFill:
    """The fill of one rank's training run: the runner, the eval (for ``eval``), the unit."""

    runner: FillRunner
    evaluation: EvalFill | None
    makespan_units: float
    bubble_units: float
    fixed_unit: bool
    last_from: int = 0

    def before_step(self, ex: Any, step: int, plain_ms: list[float]) -> bool:
        """Attach the runner on odd steps; True when this step runs with fill."""
        on = step % 2 == 1
        if on:
            self.last_from = len(self.runner.spans)  # the picture shows the last fill step
        if on and not self.fixed_unit and plain_ms:
            self.runner.set_unit(statistics.median(plain_ms) / 1e3 / self.makespan_units)
        ex.fill = self.runner if on else None
        return on

    def finish(self, steps: list[dict[str, Any]], fill_steps: list[bool]) -> dict[str, Any]:
        """Drain the eval, gather every rank's fill report; the keys on rank 0 ({} elsewhere)."""
        losses = self.evaluation.drain() if self.evaluation is not None else {}
        spans = [(f.rank, f.task, f.name, f.start, f.end)
                 for f in self.runner.spans[self.last_from:]]
        mine = (self.runner.report(), losses, self.runner.spu, spans)
        got: list[Any] = [mine]
        if dist.is_initialized():
            got = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
            dist.gather_object(mine, got if dist.get_rank() == 0 else None, dst=0)
            if dist.get_rank() != 0:
                return {}
        return _keys(got, steps, fill_steps, self.bubble_units)


def _keys(got: list[Any], steps: list[dict[str, Any]], fill_steps: list[bool],
          bubble_units: float) -> dict[str, Any]:
    reports = [g[0] for g in got]
    with_fill = [s["ms"] for s, f in zip(steps, fill_steps, strict=True) if f]
    plain = [s["ms"] for s, f in zip(steps[1:], fill_steps[1:], strict=True) if not f]
    fill_s = sum(r["fill_seconds"] for r in reports)
    bubble_s = bubble_units * max(g[2] for g in got) * max(1, len(with_fill))
    eval_losses = {k: v for g in got for k, v in g[1].items()}
    return {
        "fill_tasks_done": sum(r["fill_tasks_done"] for r in reports),
        "fill_bubble_used": fill_s / bubble_s if bubble_s > 0 else 0.0,
        "fill_slowdown": (statistics.median(with_fill) / statistics.median(plain)
                          if with_fill and plain else None),
        "fill_errors": [e for r in reports for e in r["fill_errors"]],
        "fill_never_started": [e for r in reports for e in r["fill_never_started"]],
        "fill_max_overrun_ms": max(r["fill_max_overrun"] for r in reports) * 1e3,
        "fill_memory_waits": sum(r["fill_memory_waits"] for r in reports),
        "fill_headroom_mb": min((r["fill_headroom_mb"] for r in reports
                                 if r.get("fill_headroom_mb") is not None), default=None),
        "fill_eval_losses": [eval_losses[e] for e in sorted(eval_losses)],
        "fill_spans": [g[3] for g in got],  # per rank, the last fill step, simulated units
    }


def from_plan(plan: Any, ex: Any, device: torch.device) -> TrainFill | None:
    """The fill a :class:`~pipeblocks.runtime.trainer.TrainPlan` asks for (None without)."""
    opts = plan.options
    if opts.fill is None:
        return None
    batches = []
    for e in range(opts.fill_count if opts.fill == "eval" else 0):
        got = plan.model.batch(opts.microbatch_size, 10_000 + e)  # data no step trains on
        batches.append((got[0].to(device), got[1].to(device)))
    mb = opts.fill_headroom_mb
    return setup(ex, opts.fill, task_ms=opts.fill_ms, emulate_ms=opts.emulate_ms,
                 eval_batches=batches, headroom=None if mb is None else mb * 2**20)


def setup(ex: Any, kind: str, *, task_ms: float, emulate_ms: float | None,
          eval_batches: list[tuple[Any, Any]], headroom: float | None = None) -> TrainFill:
    """The fill of this rank (every rank calls it: ``eval`` makes a process group)."""
    if kind not in FILL_KINDS:
        raise SpecError(f"--fill {kind!r} is not one of {', '.join(FILL_KINDS)}; e.g. --fill eval")
    schedule, rank = ex.schedule, ex.rank
    sim = simulate(schedule, UniformCosts(f=1, b=1, w=1), validate=False)
    # every wait: before the first pass, between passes, after the last (until the end)
    slots = place_fill(sim, [], edges=True).slots[rank]
    v = schedule.spec.stages_per_rank
    unit = (emulate_ms * v if emulate_ms is not None else task_ms) / 1e3
    evaluation = None
    if kind == "eval":
        store = store_client(60.0) if dist.is_initialized() else None
        evaluation = EvalFill(ex, eval_batches, seconds=task_ms / 1e3, store=store)
        tasks = evaluation.tasks()
    elif kind == "side":
        tasks = [_side_work(task_ms, rank)] * _ENDLESS
    else:
        tasks = [FillWork(lambda: emulated_sleep(task_ms / 1e3), task_ms / 1e3, name="sleep")
                 ] * _ENDLESS
    runner = FillRunner(schedule, rank, slots, tasks, seconds_per_unit=unit,
                        headroom=Headroom(ex.device, headroom),
                        at_end=evaluation.end_step if evaluation is not None else None)
    # the whole simulated bubble: every rank's idle time, warm-up and cool-down waits included
    return TrainFill(runner, evaluation, sim.makespan, sum(sim.idle), emulate_ms is not None)


def _side_work(task_ms: float, rank: int) -> FillWork:
    """One training step of a small MLP on a fixed random batch (seeded by the rank)."""
    g = torch.Generator().manual_seed(1000 + rank)
    x, y = torch.randn(16, 32, generator=g), torch.randn(16, 1, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    work = second_model_work(model, opt, lambda: (x, y), torch.nn.functional.mse_loss,
                             seconds=task_ms / 1e3)
    # what a step holds while it runs: the gradients, the activations autograd saves
    held = sum(4 * p.numel() for p in model.parameters()) + 4 * 16 * (32 + 32 + 1) * 2
    return dataclasses.replace(work, memory=float(held))
