"""One rank of the clipping-under-tensor-parallel test (started by pipeblocks.runtime.launch).

``python tp_clip_worker.py OUT DP DPMODE`` on dp DP x pp 2 x tp 2 ranks: the small GPT of
fsdp_worker, split in 2 stages, each tensor-parallelized on the tp slice of the 3-D mesh (and,
with DPMODE ``fsdp``, FSDP2 over its dp slice: 2-D DTensor gradients); one 1f1b step (no
optimizer); every gradient whole (``full_tensor()``) by global name, then
``clip_grad_norm_(CLIP)``: the norm and every gradient again. Rank 0 writes every rank's to
OUT (JSON).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
import torch.distributed as dist
from fsdp_worker import CLIP, MBS, M, _null, _whole_grads, config, model

from pipeblocks.generators import generate
from pipeblocks.ir.hybrid import Mesh
from pipeblocks.models.gpt import lm_loss, synthetic_batch
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.fsdp import FSDPReducer
from pipeblocks.runtime.hybrid import GradReducer, dp_slice, mesh_groups
from pipeblocks.runtime.split import ends_layout, split
from pipeblocks.runtime.tensor_parallel import parallelize_stages

PP, TP = 2, 2


def main() -> int:
    out, dp, dp_mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = Mesh(dp, PP, TP)
    groups = mesh_groups(mesh)
    d, i, t = groups.coords
    schedule = generate("1f1b", num_ranks=PP, num_microbatches=M)
    whole = model(False)
    names = {id(p): n for n, p in whole.named_parameters()}
    parts = split(whole, PP, ends_layout(4, PP))
    mine = {s: parts[s] for s in schedule.spec.stages_of(i)}
    by_name = {s: {id(p): names[id(p)] for p in parts[s].parameters()} for s in mine}
    full = parallelize_stages(mine, mesh, torch.device("cpu"))
    reducer: Any = None
    if dp_mode == "fsdp":
        reducer = FSDPReducer(mine, full["dp"], True)
    elif dp > 1:
        reducer = GradReducer(mine, groups.dp, dp)
    with reducer.gathered() if dp_mode == "fsdp" else _null():
        ex = Executor(schedule, mine, lm_loss, None, group=groups.pipeline, rank=i,
                      reducer=reducer)
    tokens, targets = synthetic_batch(config(), dp * M * MBS, seed=5, step=0)
    ex.step(dp_slice(tokens, d, dp), dp_slice(targets, d, dp))
    result: dict[str, Any] = {"grads": _whole_grads(mine, by_name)}
    result["placements"] = sorted({str(tuple(p.grad.placements)) for m in mine.values()
                                   for p in m.parameters() if hasattr(p.grad, "placements")})
    result["norm"] = ex.clip_grad_norm_(CLIP)
    result["clipped"] = _whole_grads(mine, by_name)
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, {"rank": dist.get_rank(), "coords": (d, i, t), **result})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(every, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
