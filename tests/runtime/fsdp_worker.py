"""One rank of the FSDP2 / DDP completion tests (started by pipeblocks.runtime.launch.launch).

``python fsdp_worker.py MODE OUT SCHEDULE DPMODE [raf|no-raf [PP]]`` on dp 2 x pp PP (default
2) ranks; rank 0 writes what the test checks to OUT (JSON):

- ``memory``: two steps under FSDP2; every rank samples its live parameter + gradient bytes
  (see :func:`live_bytes`) after FSDP's pre-forward (a forward pre-hook registered after
  ``fully_shard``), at every post-accumulate-grad hook of the unsharded parameters (inside the
  backward, the gradients just made), and after each unshard/reduce_grad/reshard op; the peak
  of the second step per rank, and each stage's parameter bytes.
- ``clip``: one step (no optimizer); every gradient, whole (an FSDP2 shard gathered), by
  global name, then ``clip_grad_norm_(CLIP)``: the norm and every gradient again.
- ``ties``: as ``clip`` but the head's weight tied to the embedding's (split finds the tie).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeblocks.generators import generate
from pipeblocks.ir.hybrid import Mesh
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.fsdp import FSDPReducer, dp_mesh
from pipeblocks.runtime.hybrid import GradReducer, dp_slice, mesh_groups
from pipeblocks.runtime.split import ends_layout, split

DP, PP, M, MBS, CLIP = 2, 2, 4, 2, 0.05


def config() -> GPTConfig:
    return GPTConfig(vocab=64, seq=8, dim=32, heads=2, layers=4)


def model(tied: bool) -> TinyGPT:
    m = TinyGPT(config(), seed=3)
    if tied:
        m[-1].lm.weight = m[0].tok.weight
    return m


def live_bytes(reducer: FSDPReducer) -> int:
    """Bytes of every parameter and gradient storage FSDP2 holds for this rank's stages: the
    sharded parameters, the gathered ones (0 once resharded: FSDP frees their storage), an
    all-gather still in flight, the unsharded gradients (fresh and accumulated) and the
    sharded gradients; each storage counted once."""
    seen: dict[int, int] = {}

    def count(t: Any) -> None:
        if t is None:
            return
        t = getattr(t, "_local_tensor", t)
        st = t.untyped_storage()
        if st.nbytes():
            seen[st.data_ptr()] = st.nbytes()

    for m in reducer.modules.values():
        group = reducer._state(m)._fsdp_param_group
        result = getattr(group, "_all_gather_result", None)
        if result is not None:
            count(result.all_gather_output)
        for fp in group.fsdp_params:
            count(fp._sharded_param_data)
            count(fp.sharded_param.grad)
            count(fp.unsharded_accumulated_grad)
            if hasattr(fp, "_unsharded_param"):
                count(fp._unsharded_param)
                count(fp._unsharded_param.grad)
    return sum(seen.values())


def main() -> int:
    mode, out, name, dp_mode = sys.argv[1:5]
    raf = len(sys.argv) < 6 or sys.argv[5] != "no-raf"
    pp = int(sys.argv[6]) if len(sys.argv) > 6 else PP
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = Mesh(DP, pp)
    groups = mesh_groups(mesh)
    d, i, _ = groups.coords
    schedule = generate(name, num_ranks=pp, num_microbatches=M)
    spec = schedule.spec
    whole = model(mode == "ties")
    parts = split(whole, spec.num_stages, ends_layout(4, spec.num_stages))
    mine = {s: parts[s] for s in spec.stages_of(i)}
    sizes = {s: sum(p.numel() * p.element_size() for p in parts[s].parameters())
             for s in mine}
    names = {id(p): n for n, p in whole.named_parameters()}
    by_name = {s: {id(p): names[id(p)] for p in parts[s].parameters()} for s in mine}
    reducer: Any
    if dp_mode == "fsdp":
        reducer = FSDPReducer(mine, dp_mesh(mesh, "cpu"), raf)
    else:
        reducer = GradReducer(mine, groups.dp, DP)
    opt = None
    if mode == "memory":
        opt = torch.optim.SGD([p for m in mine.values() for p in m.parameters()], lr=0.0)
    ctx = reducer.gathered() if dp_mode == "fsdp" else _null()
    with ctx:
        ex = Executor(schedule, mine, lm_loss, opt, group=groups.pipeline, rank=i,
                      reducer=reducer)
    samples: list[int] = []
    if mode == "memory":
        _sample_everywhere(reducer, samples)
    result: dict[str, Any] = {}
    peaks = []
    for step in range(2 if mode == "memory" else 1):
        tokens, targets = synthetic_batch(config(), DP * M * MBS, seed=5, step=step)
        samples.clear()
        ex.step(dp_slice(tokens, d, DP), dp_slice(targets, d, DP))
        peaks.append(max(samples, default=0))
    if mode == "memory":
        result = {"peak": peaks[-1], "sizes": sizes}
    else:
        result["grads"] = _whole_grads(mine, by_name)
        result["norm"] = ex.clip_grad_norm_(CLIP)
        result["clipped"] = _whole_grads(mine, by_name)
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, {"rank": dist.get_rank(), "coords": (d, i), **result})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(every, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _whole_grads(mine: dict[int, nn.Module], by_name: dict[int, dict[int, str]]
                 ) -> dict[str, list[float]]:
    """Every gradient of this rank by global name, whole (an FSDP2 shard gathered)."""
    grads = {}
    for s, m in mine.items():
        names = list(by_name[s].values())  # FSDP2 swaps the parameter objects: by position
        for k, p in enumerate(m.parameters()):
            if p.grad is not None:
                g = p.grad
                g = g.full_tensor() if hasattr(g, "full_tensor") else g
                grads[names[k]] = g.detach().reshape(-1).tolist()
    return grads


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _sample_everywhere(reducer: FSDPReducer, samples: list[int]) -> None:
    def take(*_: Any) -> None:
        samples.append(live_bytes(reducer))

    for m in reducer.modules.values():
        m.register_forward_pre_hook(take)  # after fully_shard's own: the stage is gathered
        for fp in reducer._state(m)._fsdp_param_group.fsdp_params:
            fp._unsharded_param.register_post_accumulate_grad_hook(take)
    run = reducer.run

    def run_and_take(op: Any) -> None:
        run(op)
        take()

    reducer.run = run_and_take  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
