"""The stage partitioner against exhaustive search on small cases."""

from __future__ import annotations

import itertools

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.planner.partition import objective, partition, stage_ranks


def _compositions(total: int, parts: int):
    """Every split of ``total`` into ``parts`` positive integers."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        yield tuple(b - a for a, b in zip((0, *cuts), (*cuts, total), strict=True))


CASES = [
    (layers, p, v, placement, head, emb)
    for layers in (4, 7, 9, 12)
    for p, v, placement in ((2, 1, "loop"), (3, 1, "loop"), (4, 1, "loop"), (2, 2, "loop"),
                            (2, 2, "v"), (3, 2, "v"))
    for head, emb in ((0.0, 0.0), (2.5, 0.0), (1.0, 0.5), (5.0, 3.0))
    if layers >= p * v
]


@pytest.mark.parametrize("layers,p,v,placement,head,emb", CASES)
def test_partition_matches_exhaustive_search(layers, p, v, placement, head, emb) -> None:
    """The split's (busiest rank, slowest stage) is the exhaustive lexicographic minimum."""
    ranks = stage_ranks(p, v, placement)
    extra = {0: emb, len(ranks) - 1: head + (emb if len(ranks) == 1 else 0.0)}
    got = partition(layers, p, stages_per_rank=v, placement=placement, layer=1.0, extra=extra)
    assert sum(got) == layers and min(got) >= 1
    best = min(objective(c, ranks, 1.0, extra) for c in _compositions(layers, len(ranks)))
    assert objective(got, ranks, 1.0, extra) == pytest.approx(best)


def test_heavy_head_gives_the_last_stage_fewer_layers() -> None:
    """A head worth three layers takes layers off the last stage, not the first."""
    got = partition(16, 4, layer=1.0, extra={3: 3.0})
    assert got[3] < got[0] and sum(got) == 16


def test_too_few_layers_is_refused() -> None:
    """Fewer layers than stages names both numbers."""
    with pytest.raises(SpecError, match="layers=3, stages=4"):
        partition(3, 4)
