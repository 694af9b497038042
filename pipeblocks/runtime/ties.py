"""Tied parameters across ranks, and the pipeline-wide gradient norm.

A *tie* is one parameter held by several stages (GPT-2's token embedding and its head). On one
rank the stages share the ``Parameter`` object, so its gradient is one sum already. Across
ranks each rank holds its own copy: :class:`TiedGrads` sums the copies' gradients once per
step (one all-reduce per set of ranks), so every copy gets the whole gradient and, stepped by
equal optimizers, stays bit-identical.

Ties are found by :func:`pipeblocks.runtime.split.split` (the same ``Parameter`` object in two
stages; it records them on every stage as ``pipeblocks_ties``) or declared
(``Executor(ties=[((0, "0.weight"), (3, "2.weight"))])``: (stage, parameter name in that
stage) per copy). A copy on another rank that is neither is caught at start-up: each rank
publishes a fingerprint of its non-constant parameters, and two equal fingerprints in stages
on different ranks stop every rank with an error that says how to declare the tie.

    >>> from torch import nn
    >>> emb = nn.Embedding(4, 2)
    >>> head = nn.Linear(2, 4, bias=False)
    >>> head.weight = emb.weight
    >>> find_ties([nn.Sequential(emb), nn.Sequential(head)])
    (((0, '0.weight'), (1, '0.weight')),)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.ir.spec import PipelineSpec

__all__ = ["Tie", "find_ties", "TiedGrads", "clip_grad_norm", "unique_parameters"]

Tie = tuple[tuple[int, str], ...]  # (stage, parameter name in that stage) per copy


def find_ties(stages: Sequence[nn.Module]) -> tuple[Tie, ...]:
    """The parameters that appear in more than one stage, as (stage, name) per stage."""
    where: dict[int, list[tuple[int, str]]] = {}
    for s, mod in enumerate(stages):
        for name, p in mod.named_parameters():
            where.setdefault(id(p), []).append((s, name))
    return tuple(tuple(v) for v in where.values() if len({s for s, _ in v}) > 1)


def unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once, in order (the optimizer's list)."""
    seen: dict[int, nn.Parameter] = {}
    for mod in modules:
        for p in mod.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


Ref = tuple[nn.Module, str]  # a stage and a parameter name: looked up when used (FSDP2 swaps
# a stage's registered parameters between the sharded and the unsharded ones)


@dataclass(slots=True)
class _Group:
    ranks: tuple[int, ...]
    refs: list[Ref]  # this rank's copy of each tie held by exactly these ranks
    handle: Any

    @property
    def params(self) -> list[nn.Parameter]:
        return [m.get_parameter(n) for m, n in self.refs]


class TiedGrads:
    """Sums the gradients of tied copies across ranks (:meth:`reduce`, once per step).

    With data parallel (a pipeline group that is not the whole world) each pipeline gets its
    own subgroups; the sum composes with the dp reduction that ran before it (a sum of dp
    averages; under FSDP2, of the shards each dp index holds, the same slice on every copy)."""

    def __init__(self, groups: list[_Group], owned: list[Ref]) -> None:
        self.groups = groups
        self._not_owned = owned  # copies another (lower) rank counts in the norm

    @staticmethod
    def build(spec: PipelineSpec, rank: int, modules: Mapping[int, nn.Module],
              declared: Sequence[Sequence[tuple[int, str]]] | None, check: bool,
              group: Any = None) -> TiedGrads:
        """The ties of this rank's stages, declared or found by ``split``; every rank calls it
        (the subgroups are made in the same order everywhere)."""
        ties = _ties(modules, declared)
        if check:
            _check_undeclared(spec, rank, modules, ties, group)
        by_ranks: dict[tuple[int, ...], list[Ref]] = {}
        not_owned: list[Ref] = []
        for tie in ties:
            ranks = tuple(sorted({spec.rank_of(s) for s, _ in tie}))
            if len(ranks) < 2:
                continue
            mine = [(modules[s], name) for s, name in tie if s in modules]
            for s, name in tie:
                if s in modules:
                    _param(modules[s], name, s)  # a clear error for a wrong name
            entry = by_ranks.setdefault(ranks, [])
            if mine:
                entry.append(mine[0])
                if rank != ranks[0]:
                    not_owned.append(mine[0])
        groups = []
        pipes = _pipelines(group, spec.num_ranks) if by_ranks else []
        for ranks, refs in sorted(by_ranks.items()):
            handle = group
            if len(ranks) < spec.num_ranks:  # every rank makes every pipeline's subgroup
                for pipe, mine_ in pipes:
                    h = dist.new_group([pipe[i] for i in ranks])
                    handle = h if mine_ else handle
            groups.append(_Group(ranks, refs if rank in ranks else [], handle))
        return TiedGrads(groups, not_owned)

    def reduce(self) -> None:
        """Sum each tie's gradient over the ranks holding it (one all-reduce per rank set)."""
        for g in self.groups:
            if not g.params:
                continue
            params = g.params
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            local = [_local(x) for x in grads]  # an FSDP2 gradient: this rank's shard
            flat = torch.cat([x.reshape(-1) for x in local])
            dist.all_reduce(flat, group=g.handle)
            at = 0
            for p, x, loc in zip(params, grads, local, strict=True):
                n = loc.numel()
                with torch.no_grad():
                    loc.copy_(flat[at: at + n].view_as(loc))
                p.grad = x
                at += n

    def counted(self, p: nn.Parameter) -> bool:
        """Whether this rank counts ``p`` in the global norm (one rank per tie)."""
        return all(p is not m.get_parameter(n) for m, n in self._not_owned)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (the same storage), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _pipelines(group: Any, num_ranks: int) -> list[tuple[tuple[int, ...], bool]]:
    """Every pipeline's global ranks, in one order on every rank, and whether it is this
    rank's: the pipeline group is the world or one pipeline of a data-parallel mesh."""
    world = dist.get_world_size()
    if group is None or world == num_ranks:
        return [(tuple(range(num_ranks)), True)]
    mine = tuple(dist.get_process_group_ranks(group))
    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine)  # the whole world: every rank builds its ties
    return [(pipe, pipe == mine) for pipe in sorted(set(map(tuple, every)))]


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float, ties: TiedGrads | None,
                   device: torch.device, p2p: Any) -> float:
    """The global 2-norm of the gradients (summed over ranks), clipped as torch does.

    A DTensor gradient adds its local shard's squares over the group of each mesh dimension it
    is sharded on (FSDP2's dp, tensor parallel's tp, or both for FSDP2 over a tensor-parallel
    stage) and counts a replicated dimension once. A plain gradient is whole on this rank: DDP
    copies are equal over dp and the tp ranks of a stage hold the same one, so, as every rank
    of a pipeline shares one dp and one tp index, the sum over the pipeline group is the
    total on every rank."""
    own = [p.grad for p in params if p.grad is not None and (ties is None or ties.counted(p))]
    sq = torch.zeros((), dtype=torch.float64, device=device)
    shards: dict[tuple[Any, ...], torch.Tensor] = {}  # groups summed over -> squares held here
    for g in own:
        part = _local(g).detach().double().pow(2).sum()
        groups = _shard_groups(g)
        if groups:
            shards[groups] = shards.get(groups, torch.zeros_like(sq)) + part
        else:
            sq += part
    for groups, part in shards.items():  # dp and tp peers hold the same stages: same order
        for group in groups:
            dist.all_reduce(part, group=group)
        sq += part
    if p2p is not None:
        dist.all_reduce(sq, group=p2p.group)
    total = math.sqrt(float(sq))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    return total


def _shard_groups(g: torch.Tensor) -> tuple[Any, ...]:
    """The process groups of the mesh dimensions a DTensor gradient is sharded on (none for a
    plain tensor or a replicated one); a partial gradient (a sum not yet reduced) is refused."""
    placements = getattr(g, "placements", ())
    groups = []
    for dim, pl in enumerate(placements):
        if pl.is_partial():
            raise SpecError(f"clip_grad_norm: a gradient is a partial DTensor ({placements}) "
                            f"on mesh dimension {dim}; reduce it first (redistribute to "
                            f"Shard or Replicate) before clipping")
        if not pl.is_replicate():  # Shard, or FSDP2's _StridedShard over a tp shard
            groups.append(g.device_mesh.get_group(mesh_dim=dim))  # type: ignore[attr-defined]
    return tuple(groups)


def _ties(modules: Mapping[int, nn.Module], declared: Sequence[Sequence[tuple[int, str]]] | None
          ) -> list[Tie]:
    if declared is not None:
        return [tuple((int(s), str(n)) for s, n in tie) for tie in declared]
    found: dict[Tie, None] = {}
    for mod in modules.values():
        for tie in getattr(mod, "pipeblocks_ties", ()):
            found[tie] = None
    return list(found)


def _param(mod: nn.Module, name: str, stage: int) -> nn.Parameter:
    try:
        return mod.get_parameter(name)
    except AttributeError as e:
        names = [n for n, _ in mod.named_parameters()][:6]
        raise SpecError(f"tie names parameter '{name}' of stage {stage}, which has none of that "
                        f"name (it has e.g. {names}); name it as stage.named_parameters() "
                        f"does") from e


def _fingerprint(p: torch.Tensor) -> tuple[Any, ...] | None:
    """A summary that equal copies share and independent random weights do not (None for a
    constant tensor: biases at zero and norms at one are equal everywhere)."""
    x = p.detach().double().reshape(-1)
    if x.numel() < 2 or bool((x == x[0]).all()):
        return None
    return (tuple(p.shape), float(x.sum()), float(x.pow(2).sum()), float(x[: 4].sum()))


def _check_undeclared(spec: PipelineSpec, rank: int, modules: Mapping[int, nn.Module],
                      ties: list[Tie], group: Any) -> None:
    """Stop if two stages on different ranks hold equal weights that no tie names."""
    prints = {(s, n): f for s, mod in modules.items() for n, p in mod.named_parameters()
              if (f := _fingerprint(p)) is not None}
    every: list[Any] = [None] * spec.num_ranks
    dist.all_gather_object(every, prints, group=group)
    known = {member for tie in ties for member in tie}
    seen: dict[Any, tuple[int, str]] = {}
    for theirs in every:
        for (s, n), f in sorted(theirs.items()):
            first = seen.setdefault(f, (s, n))
            if first == (s, n) or spec.rank_of(first[0]) == spec.rank_of(s):
                continue
            if first in known and (s, n) in known:
                continue
            raise SpecError(
                f"stage {first[0]}'s '{first[1]}' (rank {spec.rank_of(first[0])}) and stage "
                f"{s}'s '{n}' (rank {spec.rank_of(s)}) hold equal weights that no tie names: "
                f"each rank would train its own copy with part of the gradient. Split the "
                f"whole model with pipeblocks.runtime.split.split (ties are found), or pass "
                f"Executor(ties=[(({first[0]}, '{first[1]}'), ({s}, '{n}'))]); "
                f"check_ties=False if the copies are meant to differ")
