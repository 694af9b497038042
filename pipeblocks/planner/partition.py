"""Stage partitioning: how many transformer layers each stage gets, with the ends counted.

The first stage also runs the embedding and the last one the output layer, so equal layer
counts leave those stages slow (Megatron's pipeline layouts and torchtitan's fewer layers on
the ends fix this by hand). Here every layer costs ``layer`` (its F + B + W time) and stage
``s`` costs ``extra[s]`` on top (the embedding on stage 0, the head on the last stage); a
stage gets at least one layer. The split minimises, in this order:

1. the busiest rank's time per microbatch (a rank runs all its stages: v of them, placed by
   the spec's placement, loop or V), which bounds the pipeline's steady state;
2. the slowest stage, which bounds the warm-up and cool-down.

Both are min-max problems over non-decreasing per-rank costs, which taking one layer at a
time to where it costs the least solves exactly (the layers a greedy hands out are the
smallest of all possible increments); the tests check it against exhaustive search.

    >>> partition(10, 4, layer=1.0, extra={3: 2.0})   # the head costs two layers
    (3, 3, 3, 1)
    >>> partition(12, 2, stages_per_rank=2, placement="v", layer=1.0, extra={3: 2.0})
    (4, 4, 3, 1)
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence

from pipeblocks.errors import SpecError
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["partition", "objective", "stage_ranks"]

_EPS = 1e-9


def stage_ranks(num_ranks: int, stages_per_rank: int, placement: str | Placement) -> list[int]:
    """The rank of every global stage."""
    spec = PipelineSpec(num_ranks, 1, stages_per_rank, Placement(placement))
    return [spec.rank_of(s) for s in range(spec.num_stages)]


def _fill(count: int, costs: Sequence[float], layer: float) -> list[int]:
    """``count`` layers over stages with fixed ``costs``, one at least each: min max time."""
    n = [1] * len(costs)
    heap = [(c + 2 * layer, i) for i, c in enumerate(costs)]
    heapq.heapify(heap)
    for _ in range(count - len(costs)):
        _, i = heapq.heappop(heap)
        n[i] += 1
        heapq.heappush(heap, (costs[i] + (n[i] + 1) * layer, i))
    return n


def _spread(
    total: int, start: list[int], cost: Sequence[Callable[[int], float]], cap: list[int]
) -> list[int]:
    """Add ``total - sum(start)`` units one at a time where ``cost(r, n + 1)`` is least."""
    n = list(start)
    heap = [(cost[r](n[r] + 1), r) for r in range(len(n)) if n[r] < cap[r]]
    heapq.heapify(heap)
    for _ in range(total - sum(n)):
        if not heap:
            raise SpecError("internal: no rank can take another layer")  # caps sum >= total
        _, r = heapq.heappop(heap)
        n[r] += 1
        if n[r] < cap[r]:
            heapq.heappush(heap, (cost[r](n[r] + 1), r))
    return n


def partition(
    num_layers: int,
    num_ranks: int,
    *,
    stages_per_rank: int = 1,
    placement: str | Placement = "loop",
    layer: float = 1.0,
    extra: Mapping[int, float] | None = None,
) -> tuple[int, ...]:
    """Layers per global stage (see the module docstring for what is balanced)."""
    ranks = stage_ranks(num_ranks, stages_per_rank, placement)
    num_stages = len(ranks)
    if num_layers < num_stages:
        raise SpecError(f"partition needs at least one layer per stage (layers={num_layers}, "
                        f"stages={num_stages}); use fewer ranks or stages per rank")
    if not layer > 0:
        raise SpecError(f"partition needs a layer cost > 0 (got {layer})")
    ext = [float((extra or {}).get(s, 0.0)) for s in range(num_stages)]
    own: list[list[int]] = [[] for _ in range(num_ranks)]
    for s, r in enumerate(ranks):
        own[r].append(s)
    base = [sum(ext[s] for s in own[r]) for r in range(num_ranks)]
    v = stages_per_rank
    load: list[Callable[[int], float]] = [
        lambda n, r=r: n * layer + base[r] for r in range(num_ranks)  # type: ignore[misc]
    ]
    counts = _spread(num_layers, [v] * num_ranks, load, [num_layers] * num_ranks)
    limit = max(load[r](counts[r]) for r in range(num_ranks)) + _EPS * (1 + layer)
    cap = [max(v, int((limit - base[r]) / layer)) for r in range(num_ranks)]

    def slowest(r: int, n: int) -> float:
        split = _fill(n, [ext[s] for s in own[r]], layer)
        return max(c * layer + ext[s] for c, s in zip(split, own[r], strict=True))

    worst: list[Callable[[int], float]] = [
        lambda n, r=r: slowest(r, n) for r in range(num_ranks)  # type: ignore[misc]
    ]
    counts = _spread(num_layers, [v] * num_ranks, worst, cap)
    out = [0] * num_stages
    for r in range(num_ranks):
        for c, s in zip(_fill(counts[r], [ext[s] for s in own[r]], layer), own[r], strict=True):
            out[s] = c
    return tuple(out)


def objective(
    counts: Sequence[int], ranks: Sequence[int], layer: float, extra: Mapping[int, float]
) -> tuple[float, float]:
    """(busiest rank's time, slowest stage's time) of a split: what :func:`partition` minimises."""
    stage = [c * layer + extra.get(s, 0.0) for s, c in enumerate(counts)]
    per_rank: dict[int, float] = {}
    for s, r in enumerate(ranks):
        per_rank[r] = per_rank.get(r, 0.0) + stage[s]
    return max(per_rank.values()), max(stage)
