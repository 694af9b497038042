"""Hybrid parallelism at run time: the mesh's process groups and DDP-style gradient reduction.

:func:`mesh_groups` makes every process group of a :class:`~pipeblocks.ir.hybrid.Mesh` (every
rank takes part in making all of them, in one order) and returns this rank's: its pipeline
(the executor's P2P group, pipeline rank = rank in it) and its data-parallel group.
:class:`GradReducer` runs the ``REDUCE_GRAD`` ops of the lowered program
(:func:`pipeblocks.ir.hybrid.with_data_parallel`): at a stage's op it flattens the stage's
gradients into one buffer and starts an asynchronous all-reduce over the data-parallel group;
:meth:`GradReducer.finish`, before the optimizer steps, waits for every one and writes the
averages back. The executor calls it through ``Executor(..., reducer=...)``.

Loss scaling: each data-parallel rank backpropagates the mean over its own slice of the global
batch; the average over the ``dp`` ranks is the mean over the global batch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.ir.hybrid import Collective, CollectiveKind, Mesh
from pipeblocks.runtime.emulate import emulated_sleep
from pipeblocks.sim.collectives import Link, Network

__all__ = ["MeshGroups", "mesh_groups", "GradReducer", "EmulatedReducer", "dp_slice",
           "grad_bytes", "emulated_network"]


@dataclass(frozen=True, slots=True)
class MeshGroups:
    """This rank's place in the mesh: coordinates and process groups."""

    mesh: Mesh
    rank: int  # global
    pipeline: Any  # ProcessGroup of this rank's pipeline (pp ranks)
    dp: Any  # ProcessGroup of this rank's data-parallel group, or None when dp == 1
    tp: Any  # ProcessGroup of this rank's tensor-parallel group, or None when tp == 1

    @property
    def coords(self) -> tuple[int, int, int]:
        return self.mesh.coords(self.rank)


def mesh_groups(mesh: Mesh) -> MeshGroups:
    """Make the mesh's groups (a collective call: every rank calls it with the same mesh)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != mesh.world:
        raise SpecError(f"the mesh ({mesh}) has {mesh.world} ranks but {world} processes were "
                        f"started; start {mesh.world} or change --dp/--tp")
    mine: dict[str, Any] = {"pipeline": None, "dp": None, "tp": None}
    # every group is made by every rank, in this fixed order (new_group is collective)
    for name, dims in (("pipeline", mesh.pipeline), ("dp", mesh.dp_group),
                       ("tp", mesh.tp_group)):
        seen: set[tuple[int, ...]] = set()
        for r in range(world):
            ranks = dims(r)
            if ranks in seen:
                continue
            seen.add(ranks)
            if len(ranks) == world:
                group = dist.group.WORLD
            elif len(ranks) == 1 and name != "pipeline":  # the executor needs its group
                group = None
            else:
                group = dist.new_group(list(ranks))
            if rank in ranks:
                mine[name] = group
    return MeshGroups(mesh, rank, mine["pipeline"], mine["dp"], mine["tp"])


def dp_slice(batch: torch.Tensor | Any, d: int, dp: int) -> Any:
    """Data-parallel rank ``d``'s contiguous slice of a global batch (dim 0, equal parts)."""
    if isinstance(batch, torch.Tensor):
        n = batch.shape[0]
        if n % dp:
            raise SpecError(f"the global batch of {n} samples does not split over dp={dp} "
                            f"ranks; use a batch divisible by {dp}")
        k = n // dp
        return batch[d * k:(d + 1) * k]
    if isinstance(batch, Mapping):
        return {key: dp_slice(v, d, dp) for key, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(dp_slice(v, d, dp) for v in batch)
    return batch


def dp_tokens(reducer: Any, count: int, device: Any = None) -> float:
    """What a replica divides its token-sum loss by so that the dp group's gradient average is
    the global batch's token mean: the group's total count over its size (``count`` itself
    without data parallel). Replicas' slices can hold different token counts (padding), so the
    local count alone would weight a token by its replica's count. A collective of the group."""
    group, size = getattr(reducer, "group", None), getattr(reducer, "size", 1)
    if group is None or size == 1:
        return float(max(1, count))
    total = torch.tensor([float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(total, group=group)
    return max(1.0, float(total)) / size


class GradReducer:
    """DDP-style data parallel: average each stage's gradients over the dp group, one
    asynchronous all-reduce per stage, started at its ``REDUCE_GRAD`` op."""

    def __init__(self, modules: Mapping[int, nn.Module], group: Any, size: int) -> None:
        self.group = group
        self.size = size
        self.params = {s: [p for p in m.parameters() if p.requires_grad]
                       for s, m in modules.items()}
        self._inflight: list[tuple[Any, torch.Tensor, list[nn.Parameter]]] = []
        self._done: set[int] = set()  # a parameter shared by two stages is reduced once

    def run(self, op: Collective) -> None:
        """Start the op (only ``REDUCE_GRAD``: DDP keeps whole parameters)."""
        if op.kind is not CollectiveKind.REDUCE_GRAD:
            raise SpecError(f"DDP-style data parallel runs reduce_grad ops only (got {op}); "
                            f"unshard/reshard are FSDP's")
        params = [p for p in self.params.get(op.stage, []) if id(p) not in self._done]
        self._done.update(id(p) for p in params)
        if not params or self.size == 1:
            return
        for p in params:
            if p.grad is None:  # unused this step: its gradient is zero on this replica
                p.grad = torch.zeros_like(p)
        flat = torch.cat([_local(p.grad).reshape(-1) for p in params])
        work = dist.all_reduce(flat, group=self.group, async_op=True)
        self._inflight.append((work, flat, params))

    def finish(self) -> None:
        """Wait for every reduction of the step and write the averages back."""
        for work, flat, params in self._inflight:
            work.wait()
            flat.div_(self.size)
            at = 0
            for p in params:
                g = _local(p.grad)
                g.copy_(flat[at:at + g.numel()].view_as(g))
                at += g.numel()
        self._inflight.clear()
        self._done.clear()


def _local(t: Any) -> torch.Tensor:
    """A gradient's tensor on this rank: a tensor-parallel shard's (a DTensor's) local part,
    the same part on every rank of the dp group (they share the tp index)."""
    local = getattr(t, "to_local", None)
    return local() if local is not None else t  # type: ignore[no-any-return]


class EmulatedReducer:
    """Reductions that take what the cost model says (``--emulate-ms`` with ``--dp``): one
    communication stream per rank, so a reduction starts when it is reached and the previous
    one is done, and :meth:`finish` sleeps until the last one would end."""

    def __init__(self, seconds: Mapping[int, float]) -> None:
        self.seconds = dict(seconds)  # stage -> seconds of its all-reduce
        self._free = 0.0

    def run(self, op: Collective) -> None:
        now = time.perf_counter()
        self._free = max(now, self._free) + self.seconds.get(op.stage, 0.0)

    def finish(self) -> None:
        emulated_sleep(max(0.0, self._free - time.perf_counter()))
        self._free = 0.0


def grad_bytes(module: nn.Module) -> int:
    """Bytes of a stage's gradients (its trainable parameters)."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def emulated_network(bandwidth: float) -> Network:
    """The network of an emulated run: every link ``bandwidth`` bytes/s, no latency."""
    link = Link(bandwidth)
    return Network(gpus_per_node=1, intra=link, inter=link)
