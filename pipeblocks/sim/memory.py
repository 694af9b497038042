"""Memory presets and how to put one under any cost model's times.

The accounting is always the same (docs/design.md, "Memory accounting"): F allocates
``mem_f`` at its start; B frees ``mem_f - mem_w``, W frees ``mem_w``, BW frees ``mem_f``, each
at its end.
The presets say what mem_f and mem_w are per stage:

- ``unit``: mem_f = mem_w = 1 stage-activation (the activation is held until W; the accounting
  of the building-block papers, in which the peaks of docs/design.md, "Closed forms", are
  stated).
- ``transformer``: bytes per stage from a :class:`~pipeblocks.sim.transformer.TransformerModel`
  (mem_w < mem_f: B frees what only it needed).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import UniformCosts, simulate
    >>> costs = with_memory(UniformCosts(f=1, b=2, w=1), memory_preset("unit"))
    >>> simulate(generate("zb-h1", 4, 8), costs).peak_memory   # rank r defers r W's
    (4.0, 4.0, 4.0, 4.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.transformer import DEFAULT_MODEL, TransformerModel, stage_memory

__all__ = [
    "MemoryModel",
    "UnitMemory",
    "TransformerMemory",
    "WithMemory",
    "with_memory",
    "memory_preset",
    "MEMORY_PRESETS",
]

MEMORY_PRESETS = ("unit", "transformer")


class MemoryModel(Protocol):
    """Per-stage (mem_f, mem_w)."""

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]: ...


@dataclass(frozen=True, slots=True)
class UnitMemory:
    """mem_f = mem_w = 1 stage-activation for every stage."""

    @property
    def memory_unit(self) -> str:
        return "stage-activations"

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return 1.0, 1.0


@dataclass(frozen=True, slots=True)
class TransformerMemory:
    """Bytes per stage of ``model``'s layers (and its output layer on the last stage)."""

    model: TransformerModel = DEFAULT_MODEL

    @property
    def memory_unit(self) -> str:
        return "bytes"

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return stage_memory(self.model, spec.num_stages, stage)


@dataclass(frozen=True, slots=True)
class WithMemory:
    """The times of ``costs`` with the memory of ``mem``."""

    costs: CostModel
    mem: MemoryModel

    @property
    def memory_unit(self) -> str:
        return str(getattr(self.mem, "memory_unit", "stage-activations"))

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        return self.costs.pass_time(spec, stage, kind)

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        return self.costs.comm_time(spec, src_rank, dst_rank, stage)

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return self.mem.memory(spec, stage)


def with_memory(costs: CostModel, mem: MemoryModel) -> WithMemory:
    """``costs``' times, ``mem``'s memory."""
    return WithMemory(costs, mem)


def memory_preset(name: str, model: TransformerModel | None = None) -> MemoryModel:
    """The preset called ``name`` (``unit`` or ``transformer``; the latter for ``model``)."""
    if name == "unit":
        return UnitMemory()
    if name == "transformer":
        return TransformerMemory(DEFAULT_MODEL if model is None else model)
    raise SpecError(f"unknown memory model {name!r}; use one of: {', '.join(MEMORY_PRESETS)}")
