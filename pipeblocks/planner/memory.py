"""Activation memory per pipeline rank: the model's bytes per stage under a schedule's order.

A rank's activation peak depends only on the order of its own passes, not on their times, so
it is the simulator's peak with any times and the model's per-stage bytes
(:mod:`pipeblocks.planner.model`, or a profile's measured bytes,
:mod:`pipeblocks.planner.measured`): the embedding and the head are counted on their stages.
``release_at_b`` says whether B frees what only it needed (mem_f - mem_w) as the papers assume;
pipeblocks' executor keeps a microbatch's graph until its W, so it is False for its runs.

    >>> from pipeblocks.planner.model import parse_model
    >>> gpt = parse_model("layers=8,hidden=64,heads=4,seq=32,vocab=256,act_bytes=4,dropout=0,"
    ...                   "flash=1")
    >>> [round(b / 2**20, 2) for b in activation_peaks(gpt, "1f1b", 4, 8, 4)]   # MiB
    [4.02, 3.01, 2.01, 1.19]
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir.schedule import Schedule
from pipeblocks.planner.model import ModelSpec
from pipeblocks.planner.partition import partition
from pipeblocks.sim.costs_file import PerStageCosts
from pipeblocks.sim.engine import simulate

__all__ = ["stage_activations", "activation_peaks"]


def stage_activations(
    model: ModelSpec, layers_per_stage: Sequence[int], tokens: float, *, tp: int = 1,
    recompute: bool = False, release_at_b: bool = True,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mem_f, mem_w) bytes per stage for ``tokens`` = s * b tokens a microbatch."""
    lf, lw = model.layer_activation(tokens, recompute=recompute)
    hf, hw = model.head_activation(tokens)
    ef, ew = model.embedding_activation(tokens)
    last = len(layers_per_stage) - 1
    mem_f = [n * lf + (hf if s == last else 0.0) + (ef if s == 0 else 0.0)
             for s, n in enumerate(layers_per_stage)]
    mem_w = [n * lw + (hw if s == last else 0.0) + (ew if s == 0 else 0.0)
             for s, n in enumerate(layers_per_stage)]
    if not release_at_b:
        mem_w = mem_f
    return tuple(x / tp for x in mem_f), tuple(x / tp for x in mem_w)


def activation_peaks(
    model: ModelSpec, schedule: str | Schedule, pp: int, num_microbatches: int,
    microbatch_size: int, *, layers_per_stage: Sequence[int] | None = None, tp: int = 1,
    recompute: bool = False, release_at_b: bool = True,
) -> tuple[float, ...]:
    """Peak activation bytes of each pipeline rank (one tensor-parallel shard) of
    ``schedule`` (a generator name, built with pp and m, or a schedule with that spec)."""
    if isinstance(schedule, str):
        schedule = generate(schedule, pp, num_microbatches)
    spec = schedule.spec
    if (spec.num_ranks, spec.num_microbatches) != (pp, num_microbatches):
        raise SpecError(f"the schedule is for p={spec.num_ranks}, m={spec.num_microbatches} "
                        f"but pp={pp}, m={num_microbatches} were asked; pass matching numbers")
    counts = tuple(layers_per_stage) if layers_per_stage is not None else partition(
        model.layers, pp, stages_per_rank=spec.stages_per_rank, placement=spec.placement)
    if len(counts) != spec.num_stages or sum(counts) != model.layers:
        raise SpecError(f"layers_per_stage {list(counts)} must have {spec.num_stages} entries "
                        f"summing to {model.layers} (the model's layers)")
    mem_f, mem_w = stage_activations(model, counts, microbatch_size * model.seq, tp=tp,
                                     recompute=recompute, release_at_b=release_at_b)
    ones = (1.0,) * spec.num_stages
    costs = PerStageCosts(ones, ones, ones, mem_f, mem_w, memory_unit="bytes")
    return simulate(schedule, costs).peak_memory
