"""What recomputation costs the simulator: a longer backward and a smaller hold after F.

For a stage in ``schedule.recompute`` (:mod:`pipeblocks.ir.recompute`):

- F keeps only the stage input, ``mem_in`` (instead of ``mem_f``) until the stage's B.
- B (or BW) re-runs the forward first: its time grows by the stage's F time, and at its start
  the rank holds ``mem_f - mem_in`` more (the rebuilt activations). B then frees
  ``mem_f - mem_w`` and W frees ``mem_w`` at their ends, as without recompute.

``mem_in`` comes from the cost model: an ``input_memory(spec, stage)`` method where it has one;
for the transformer presets the bytes of the stage's input (s·b·h elements, token ids on stage
0); else 0 (the ``unit`` preset counts whole stage-activations, and a stage input is a small
fraction of one: about 1/34 of a transformer layer's).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.ir.recompute import with_recompute
    >>> from pipeblocks.sim import simulate
    >>> plain, r = (simulate(s) for s in (generate("1f1b", 4, 8),
    ...                                    with_recompute(generate("1f1b", 4, 8))))
    >>> plain.peak_memory, r.peak_memory      # one rebuilt stage-activation at a time
    ((4.0, 3.0, 2.0, 1.0), (1.0, 1.0, 1.0, 1.0))
    >>> plain.makespan, r.makespan
    (33.0, 44.0)
"""

from __future__ import annotations

import dataclasses

from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.tables import Tables

__all__ = ["input_memory", "recompute_tables", "rebuild_memory"]

_TOKEN_BYTES = 8.0  # stage 0's input: int64 token ids


def input_memory(costs: CostModel, spec: PipelineSpec, stage: int) -> float:
    """What a recomputed stage keeps between F and B for one microbatch (memory unit of
    ``costs``), at most the stage's mem_f."""
    mem_f = float(costs.memory(spec, stage)[0])
    for obj in (costs, getattr(costs, "mem", None)):
        fn = getattr(obj, "input_memory", None)
        if callable(fn):
            return min(float(fn(spec, stage)), mem_f)
        model = getattr(obj, "model", None)
        if model is not None and hasattr(model, "transfer_bytes"):
            sb = float(model.seq_len * model.microbatch_size)
            held = sb * _TOKEN_BYTES if stage == 0 else float(model.transfer_bytes())
            return min(held, mem_f)
    return 0.0


def recompute_tables(tab: Tables, schedule: Schedule) -> Tables:
    """``tab`` with B and BW of every recomputed stage longer by its F."""
    if not schedule.recompute:
        return tab
    b, bw = list(tab.b), list(tab.bw)
    for s in schedule.recompute:
        b[s] += tab.f[s]
        bw[s] += tab.f[s]
    return dataclasses.replace(tab, b=tuple(b), bw=tuple(bw))


def rebuild_memory(
    schedule: Schedule, costs: CostModel, tab: Tables
) -> tuple[list[float], list[float]]:
    """Per stage: what F holds (``mem_in`` where recomputed, else mem_f) and what B or BW
    adds at its start (``mem_f - mem_in`` where recomputed, else 0)."""
    hold = list(tab.mem_f)
    bump = [0.0] * len(hold)
    for s in schedule.recompute:
        hold[s] = input_memory(costs, schedule.spec, s)
        bump[s] = tab.mem_f[s] - hold[s]
    return hold, bump
