"""Cost models: how long each pass and transfer takes, and how much activation memory it holds.

A cost model answers three questions for a spec (all times in one unit of the user's choice,
memory in the model's unit: stage-activations for ``unit``, bytes where a preset knows them):

- ``pass_time(spec, stage, kind)``: duration of one pass of ``stage`` on one microbatch.
- ``comm_time(spec, src_rank, dst_rank, stage)``: one transfer between two different ranks.
- ``memory(spec, stage)``: ``(mem_f, mem_w)``: F allocates mem_f; B frees mem_f - mem_w; W frees
  mem_w; BW frees mem_f (docs/design.md, "Memory accounting").

    >>> from pipeblocks.ir import PipelineSpec, Pass
    >>> c = UniformCosts(f=3, b=4, w=2, comm=0.5)
    >>> c.pass_time(PipelineSpec(4, 8, 2, "v"), 0, Pass.BW)   # (b + w) / v
    3.0

Other cost models: :class:`~pipeblocks.sim.costs_file.PerStageCosts` (a JSON file),
:class:`~pipeblocks.sim.transformer.TransformerCosts` (model and machine numbers); memory
presets in :mod:`pipeblocks.sim.memory`. A cost model may say what its memory counts with a
``memory_unit`` attribute ("stage-activations" when absent, "bytes" for the transformer preset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import PipelineSpec

__all__ = ["CostModel", "UniformCosts", "UNIT", "memory_unit", "one_f_one_b_peak"]


@runtime_checkable
class CostModel(Protocol):
    """What the simulator asks of a cost model."""

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float: ...

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float: ...

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]: ...


@dataclass(frozen=True, slots=True)
class UniformCosts:
    """Per-rank times of one microbatch's F, B, W and one transfer; memory per stage.

    A stage on a rank that holds v stages takes 1/v of each time (BW = B + W). Memory is the
    ``unit`` preset by default: mem_f = 1 stage-activation, mem_w = mem_f (held until W).
    """

    f: float = 1.0
    b: float = 1.0
    w: float = 1.0
    comm: float = 0.0
    mem_f: float = 1.0
    mem_w: float | None = None

    def __post_init__(self) -> None:
        for name in ("f", "b", "w", "comm", "mem_f"):
            value = getattr(self, name)
            expect("UniformCosts", name, value, (int, float))
            if value != value:
                raise SpecError(f"cost '{name}' must be a number (got {value!r})")
            if value < 0 or value == float("inf"):
                raise SpecError(f"cost '{name}' must be finite and >= 0 (got {value})")
        expect("UniformCosts", "mem_w", self.mem_w, (int, float), none=True)
        if self.mem_w is not None and not 0 <= self.mem_w <= self.mem_f:
            raise SpecError(
                f"cost 'mem_w' must lie in 0..mem_f (got mem_w={self.mem_w}, mem_f={self.mem_f})"
            )

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        v = spec.stages_per_rank
        if kind is Pass.F:
            return self.f / v
        if kind is Pass.B:
            return self.b / v
        if kind is Pass.W:
            return self.w / v
        return (self.b + self.w) / v

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        return 0.0 if src_rank == dst_rank else self.comm

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return self.mem_f, self.mem_f if self.mem_w is None else self.mem_w


UNIT = UniformCosts()
"""Unit costs: F = B = W = 1 per rank, no transfer cost, unit memory."""


def memory_unit(costs: CostModel) -> str:
    """What ``costs.memory`` counts: its ``memory_unit`` attribute, else "stage-activations"."""
    return str(getattr(costs, "memory_unit", "stage-activations"))


def one_f_one_b_peak(spec: PipelineSpec, costs: CostModel) -> float:
    """1F1B's peak memory for the same model on the same p ranks, with m >= p.

    1F1B puts consecutive model chunks on the ranks: its rank r holds the stages r*v ..
    r*v+v-1 of ``spec`` as one chunk, and at its peak it holds p - r microbatches' activations
    of that chunk (BW frees them whole, so mem_w does not matter). The reference is the largest
    of these over the ranks. With equal stages it is p * v * mem_f = the whole model's
    activation for one microbatch (docs/design.md, "Memory accounting"); with a heavy first or
    last stage it is what 1F1B really holds on its busiest rank.

    >>> one_f_one_b_peak(PipelineSpec(4, 8, 2, "v"), UNIT)
    8.0
    """
    p, v = spec.num_ranks, spec.stages_per_rank
    mem_f = [float(costs.memory(spec, s)[0]) for s in range(spec.num_stages)]
    return max((p - r) * sum(mem_f[r * v : (r + 1) * v]) for r in range(p))
