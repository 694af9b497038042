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

__all__ = ["CostModel", "UniformCosts", "StageCosts", "UNIT", "memory_unit", "one_f_one_b_peak",
           "describe_costs"]


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
        _check_numbers(self)

    def describe(self) -> str:
        """The costs as the header of every output names them."""
        return f"--cost (per rank) {_fields(self)}"

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


@dataclass(frozen=True, slots=True)
class StageCosts:
    """Times of one microbatch's F, B, W on every stage (a model chunk) of a model cut into
    ``stages_per_rank`` stages per rank (default 2, the V and interleaved schedules); never
    divided: a rank does v of them. The per-stage form of :class:`UniformCosts`
    (``--stage-cost``): ``StageCosts(f=1.5)`` is ``UniformCosts(f=3)`` at v = 2. A schedule with
    another v cuts the model otherwise, so these times do not fit it (a SpecError, and the
    search leaves such placements out, as for a per-stage costs file). Memory per stage.

        >>> StageCosts(f=1.5).pass_time(PipelineSpec(4, 8, 2, "v"), 0, Pass.F)
        1.5
    """

    f: float = 1.0
    b: float = 1.0
    w: float = 1.0
    comm: float = 0.0
    mem_f: float = 1.0
    mem_w: float | None = None
    stages_per_rank: int = 2

    def __post_init__(self) -> None:
        _check_numbers(self)
        v = self.stages_per_rank
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"cost 'v' (stages per rank) must be an integer >= 1 (got {v!r})")

    def describe(self) -> str:
        return f"--stage-cost (per stage, v={self.stages_per_rank}) {_fields(self)}"

    def check(self, spec: PipelineSpec) -> None:
        """Raise :class:`SpecError` when ``spec`` cuts the model into other stages."""
        if spec.stages_per_rank != self.stages_per_rank:
            v = spec.stages_per_rank
            raise SpecError(
                f"--stage-cost times are per stage of a model cut into {self.stages_per_rank} "
                f"stages per rank, but {spec.describe()} has {v}; add v={v} to --stage-cost if "
                f"the times are for that cut, or give per-rank times with --cost")

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        self.check(spec)
        if kind is Pass.BW:
            return self.b + self.w
        return {Pass.F: self.f, Pass.B: self.b, Pass.W: self.w}[kind]

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        return 0.0 if src_rank == dst_rank else self.comm

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        self.check(spec)
        return self.mem_f, self.mem_f if self.mem_w is None else self.mem_w


def _check_numbers(c: UniformCosts | StageCosts) -> None:
    for name in ("f", "b", "w", "comm", "mem_f"):
        value = getattr(c, name)
        expect(type(c).__name__, name, value, (int, float))
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise SpecError(f"cost '{name}' must be a number (got {value!r})")
        if value < 0 or value == float("inf"):
            raise SpecError(f"cost '{name}' must be finite and >= 0 (got {value})")
    expect(type(c).__name__, "mem_w", c.mem_w, (int, float), none=True)
    if c.mem_w is not None and not 0 <= c.mem_w <= c.mem_f:
        raise SpecError(
            f"cost 'mem_w' must lie in 0..mem_f (got mem_w={c.mem_w}, mem_f={c.mem_f})"
        )


def _fields(c: UniformCosts | StageCosts) -> str:
    text = f"f={c.f:g},b={c.b:g},w={c.w:g},comm={c.comm:g}"
    if c.mem_f != 1.0 or c.mem_w is not None:
        text += f",mem_f={c.mem_f:g}" + ("" if c.mem_w is None else f",mem_w={c.mem_w:g}")
    return text


def describe_costs(costs: CostModel) -> str:
    """What the times are and how they were given, for output headers: per rank (``--cost``,
    divided among a rank's v stages) or per stage (``--stage-cost``, a costs file).

    >>> describe_costs(UniformCosts(f=3, b=4, w=2, comm=0.5))
    '--cost (per rank) f=3,b=4,w=2,comm=0.5'
    """
    describe = getattr(costs, "describe", None)
    inner = getattr(costs, "costs", None)  # a WithMemory: the times are its inner model's
    if describe is None and inner is not None:
        return f"{describe_costs(inner)}; memory: {memory_unit(costs)}"
    return str(describe()) if callable(describe) else type(costs).__name__


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
