"""Pipeline-wide gradient clipping under tensor parallel (issue 17): the norm and every
clipped gradient equal the unpartitioned model's. Real gloo processes on (tp 2, pp 2) and,
with FSDP2 over the tensor-parallel stages (2-D DTensor gradients), (dp 2, tp 2, pp 2)
(tests/runtime/tp_clip_worker.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pipeblocks.models.gpt import lm_loss, synthetic_batch
from pipeblocks.runtime.launch import launch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import fsdp_worker as fw  # noqa: E402
import tp_clip_worker as tw  # noqa: E402


def _reference(dp: int) -> tuple[dict[str, torch.Tensor], float, dict[str, torch.Tensor]]:
    """The unpartitioned model on the global batch: gradients, norm, clipped gradients."""
    model = fw.model(False)
    tokens, targets = synthetic_batch(fw.config(), dp * fw.M * fw.MBS, seed=5, step=0)
    lm_loss(model(tokens), targets).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), fw.CLIP))
    return grads, norm, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("dp,dp_mode,placements", [
    (1, "none", "(Shard(dim=0),)"),  # column-wise weights: sharded on tp only
    (2, "fsdp", "(_StridedShard(dim=0, sf=2), Shard(dim=0))")])  # FSDP2 over tp: dp x tp
def test_clipping_under_tensor_parallel_equals_the_unpartitioned_model(
        dp: int, dp_mode: str, placements: str, tmp_path: Path) -> None:
    """Every rank's norm (a tp-sharded gradient's squares summed over the tp group, and under
    FSDP2 over the dp group too; a replicated one counted once) and every clipped gradient
    (gathered) equal torch.nn.utils.clip_grad_norm_ on the whole model (<= 1e-5)."""
    out = tmp_path / "out.json"
    ranks = dp * tw.PP * tw.TP
    res = launch([sys.executable, str(HERE / "tp_clip_worker.py"), str(out), str(dp), dp_mode],
                 ranks, deadline=300)
    assert res.fault == "" and res.codes == (0,) * ranks, res
    rows = json.loads(out.read_text())
    grads, norm, clipped = _reference(dp)
    assert norm > fw.CLIP * 2  # the clip scales every gradient
    seen = set()
    for row in rows:
        assert placements in row["placements"], row["placements"]  # the case meant
        assert row["norm"] == pytest.approx(norm, rel=1e-5)
        for key, want in (("grads", grads), ("clipped", clipped)):
            for n, g in row[key].items():
                assert torch.tensor(g) == pytest.approx(want[n].reshape(-1), abs=1e-5), n
                seen.add(n)
    assert seen == set(grads)


def test_a_partial_dtensor_gradient_is_refused(tmp_path: Path) -> None:
    """A gradient still partial (a sum not reduced) has no norm from its local value: clipping
    names the placement and the fix (gloo, one process)."""
    import datetime

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Shard

    from pipeblocks.errors import SpecError
    from pipeblocks.runtime.ties import clip_grad_norm

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=30))
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = torch.nn.Parameter(DTensor.from_local(torch.ones(2), mesh, [Shard(0)]))
        p.grad = DTensor.from_local(torch.full((2,), 3.0), mesh, [Shard(0)])
        assert clip_grad_norm([p], 1.0, None, torch.device("cpu"), None) == pytest.approx(
            18 ** 0.5)  # a shard's squares over its (one-rank) group
        p.grad = DTensor.from_local(torch.ones(2), mesh, [Partial()])
        with pytest.raises(SpecError, match=r"partial DTensor .* on mesh dimension 0; reduce"):
            clip_grad_norm([p], 1.0, None, torch.device("cpu"), None)
    finally:
        dist.destroy_process_group()
