"""Tensor-parallel collectives in the simulated passes: the all-reduces of activations.

A tensor-parallel transformer block (Megatron's pattern, what
:mod:`pipeblocks.runtime.tensor_parallel` runs) all-reduces one activation of ``b * t * dim``
elements twice in its forward (after the attention projection and after the MLP) and twice in
its backward (the input gradients of the column-wise layers); the weight gradients need none.
The all-reduces sit inside the pass, between its kernels, so they add to its time: F and B
(and BW) of a stage with ``blocks`` blocks each take ``2 * blocks`` all-reduces longer, W
nothing. The group is ``tp`` consecutive ranks (stride 1: one node while ``tp`` fits it,
:meth:`pipeblocks.sim.collectives.Network.link`). The planner charges the same per layer
(``pipeblocks.planner.grid``).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import UniformCosts, simulate
    >>> from pipeblocks.sim.collectives import Link, Network
    >>> net = Network(gpus_per_node=8, intra=Link(1e9), inter=Link(1e8))
    >>> t = tp_pass_time(1e6, tp=2, network=net, blocks=1)   # 2 all-reduces of 1 MB, seconds
    >>> round(t * 1e3, 3)
    2.0
    >>> s = generate("1f1b", num_ranks=2, num_microbatches=4)
    >>> costs = TensorParallelCosts(UniformCosts(f=1, b=1, w=1), extra=(t * 1e3, t * 1e3))
    >>> simulate(s, costs).makespan, simulate(s, UniformCosts(f=3, b=3, w=1)).makespan
    (35.0, 35.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.sim.collectives import Network
from pipeblocks.sim.costs import CostModel

__all__ = ["tp_pass_time", "TensorParallelCosts"]

ALL_REDUCES_PER_BLOCK = 2  # per pass with a backward or forward: attention and MLP


def tp_pass_time(act_bytes: float, *, tp: int, network: Network, blocks: int = 1) -> float:
    """Seconds of one F (or B) pass's tensor-parallel all-reduces: ``2 * blocks`` of
    ``act_bytes`` over ``tp`` consecutive ranks (0 for tp 1)."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
        raise SpecError(f"blocks must be an integer >= 0 (got {blocks!r})")
    return ALL_REDUCES_PER_BLOCK * blocks * network.all_reduce(act_bytes, size=tp, stride=1)


@dataclass(frozen=True, slots=True)
class TensorParallelCosts:
    """``base`` with ``extra[stage]`` (in the base's time unit: one stage's
    :func:`tp_pass_time`) added to every F, B and BW pass of the stage; W, the transfers and
    memory are the base's."""

    base: CostModel
    extra: Sequence[float]

    def __post_init__(self) -> None:
        bad = [e for e in self.extra if not isinstance(e, int | float) or not e >= 0]
        if bad:
            raise SpecError(f"tensor-parallel extra times must be numbers >= 0 (got {bad[0]!r})")

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        if len(self.extra) != spec.num_stages:
            raise SpecError(f"TensorParallelCosts has {len(self.extra)} extra times but the "
                            f"schedule has {spec.num_stages} stages; give one per stage")
        t = self.base.pass_time(spec, stage, kind)
        return t if kind is Pass.W else t + self.extra[stage]

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        return self.base.comm_time(spec, src_rank, dst_rank, stage)

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return self.base.memory(spec, stage)

    def describe(self) -> str:
        inner: Any = getattr(self.base, "describe", None)
        text = inner() if callable(inner) else type(self.base).__name__
        return f"{text}, tensor-parallel all-reduces per F/B " + ", ".join(
            f"{e:g}" for e in self.extra)
