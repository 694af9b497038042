"""The mesh's rank order and the data-parallel ops of the lowered program."""

from __future__ import annotations

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.hybrid import Collective, CollectiveKind, Mesh, with_data_parallel
from pipeblocks.ir.lowering import Comm, lower


def test_mesh_rank_order_is_dp_pp_tp_with_tp_innermost() -> None:
    """rank = (d * pp + i) * tp + t; groups are consistent with coords."""
    mesh = Mesh(dp=2, pp=2, tp=2)
    assert [mesh.coords(r) for r in range(8)] == [
        (d, i, t) for d in range(2) for i in range(2) for t in range(2)]
    assert mesh.tp_group(5) == (4, 5)
    assert mesh.pipeline(5) == (5, 7)
    assert mesh.dp_group(5) == (1, 5)
    assert Mesh.of(8, dp=2).pp == 4


def test_mesh_refuses_sizes_that_do_not_divide() -> None:
    """6 ranks do not split into dp 4; a zero dimension is refused."""
    with pytest.raises(SpecError, match="divisible by dp"):
        Mesh.of(6, dp=4)
    with pytest.raises(SpecError, match="'tp' must be an integer >= 1"):
        Mesh(1, 2, 0)


@pytest.mark.parametrize("name", ["1f1b", "zb-h1", "zb-v", "v-half", "interleaved-1f1b"])
def test_reduce_grad_comes_once_per_stage_after_its_last_weight_pass(name: str) -> None:
    """Each stage's reduce_grad follows every W/BW of that stage and only sends in between."""
    low = lower(generate(name, num_ranks=2, num_microbatches=4))
    dp = with_data_parallel(low)
    for rank, prog in enumerate(dp.programs):
        reduces = [(pos, op) for pos, op in enumerate(prog) if isinstance(op, Collective)]
        stages = sorted(op.stage for _, op in reduces)
        assert stages == sorted(low.schedule.spec.stages_of(rank))
        for pos, op in reduces:
            assert op.kind is CollectiveKind.REDUCE_GRAD
            later = [o for o in prog[pos:] if isinstance(o, Action) and o.stage == op.stage
                     and o.kind in (Pass.W, Pass.BW)]
            assert later == []
            prev = [o for o in prog[:pos] if not isinstance(o, Comm | Collective)][-1]
            assert prev.stage == op.stage and prev.kind in (Pass.W, Pass.BW)
        # nothing else moved
        assert [o for o in prog if not isinstance(o, Collective)] == list(low.programs[rank])
    assert dp.max_posted() == low.max_posted()
