"""GPU check: the B/W split and autocast on one device, the split's cost, a costs file.

    $ python benchmarks/gpu_check.py                  # one GPU: hidden 4096, under 5 minutes
    $ python benchmarks/gpu_check.py --device cpu     # small sizes: what the tests run

1. **Gradients**: a stage of two transformer blocks (:class:`pipeblocks.models.gpt.Block`) in
   the middle of a pipeline, split (B then W) against fused (BW), in fp32 and under bf16
   autocast (and fp16 on CUDA): the largest difference of the input gradient and of every
   weight gradient, relative to the largest fused value.
2. **Checkpointing**: the same stage with both blocks checkpointed, split, against fused
   without checkpointing (bf16 autocast).
3. **Cost**: :func:`pipeblocks.runtime.profile.profile_stages` of one real-size block (hidden
   4096 on a GPU) per stage, two stages: F, B, W, BW medians and (B + W) / BW.
4. **Costs file**: that profile as a costs file (``--costs``, default
   ``benchmarks/results/gpu_costs.json``), which ``simulate``/``search --costs`` read.

Prints one JSON object (also written to ``--out``); exit 1 if a gradient differs by more than
the tolerance (fp32 1e-4, bf16/fp16 2e-2, relative).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeblocks.models.gpt import Block, GPTConfig
from pipeblocks.runtime.profile import profile_stages
from pipeblocks.runtime.stage import Stage

HERE = Path(__file__).resolve().parent
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


def _stage(cfg: GPTConfig, device: torch.device, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(Block(cfg), Block(cfg)).to(device)


def _grads(cfg: GPTConfig, device: torch.device, x: torch.Tensor, gy: torch.Tensor, *,
           split: bool, cast: tuple[str, torch.dtype] | None, ckpt: bool) -> list[torch.Tensor]:
    mod = _stage(cfg, device, seed=1)
    st = Stage(mod, stage=1, num_stages=3, split=split, autocast=cast,
               checkpoint=(lambda m: isinstance(m, Block)) if ckpt else None)
    st.forward(0, x)
    if split:
        gx = st.backward_input(0, gy)
        st.backward_weight(0)
    else:
        gx = st.backward(0, gy)
    return [gx.float()] + [p.grad.float() for p in mod.parameters()]


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) / max(float(y.abs().max()), 1e-12)
               for x, y in zip(a, b, strict=True))


def check_gradients(cfg: GPTConfig, device: torch.device, batch: int) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(batch, cfg.seq, cfg.dim, device=device)
    gy = torch.randn(batch, cfg.seq, cfg.dim, device=device)
    kinds: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
    if device.type == "cuda":
        kinds["fp16"] = torch.float16
    out: dict[str, Any] = {}
    for name, dtype in kinds.items():
        cast = None if dtype is None else (device.type, dtype)
        fused = _grads(cfg, device, x, gy, split=False, cast=cast, ckpt=False)
        out[name] = _rel(_grads(cfg, device, x, gy, split=True, cast=cast, ckpt=False), fused)
        if name == "bf16":
            out["bf16_checkpointed"] = _rel(
                _grads(cfg, device, x, gy, split=True, cast=cast, ckpt=True), fused)
    return out


def measure_cost(cfg: GPTConfig, device: torch.device, batch: int, reps: int,
                 costs: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    stages = [nn.Sequential(Block(cfg)).to(device) for _ in range(2)]
    x = torch.randn(batch, cfg.seq, cfg.dim, device=device)
    prof = profile_stages(stages, x, torch.zeros_like(x), nn.functional.mse_loss, reps=reps,
                          warmup=2)
    costs.parent.mkdir(parents=True, exist_ok=True)
    costs.write_text(json.dumps(prof.costs(), indent=1))
    s = prof.stages[1]  # a stage with an input gradient: the whole split
    return {"f_ms": s.f, "b_ms": s.b, "w_ms": s.w, "bw_ms": s.bw,
            "split_over_fused": s.split_over_fused, "costs_file": str(costs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--dim", type=int, default=None, help="hidden size (4096 on cuda, 64 on cpu)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (1024 / 16)")
    p.add_argument("--batch", type=int, default=None, help="microbatch size (2 / 2)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (10 / 3)")
    p.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    p.add_argument("--costs", default=str(HERE / "results" / "gpu_costs.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    gpu = device.type == "cuda"
    dim = args.dim or (4096 if gpu else 64)
    cfg = GPTConfig(dim=dim, heads=max(1, dim // 128), seq=args.seq or (1024 if gpu else 16))
    batch = args.batch or 2
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 compared in fp32
    t0 = time.perf_counter()
    small = GPTConfig(dim=min(dim, 1024), heads=max(1, min(dim, 1024) // 128), seq=min(cfg.seq, 256))
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if gpu else "cpu",
                              "torch": torch.__version__, "dim": dim, "seq": cfg.seq,
                              "batch": batch}
    report["grad_rel_diff"] = check_gradients(small, device, batch)
    report["cost"] = measure_cost(cfg, device, batch, args.reps or (10 if gpu else 3),
                                  Path(args.costs))
    report["seconds"] = time.perf_counter() - t0
    bad = {k: v for k, v in report["grad_rel_diff"].items()
           if v > TOLERANCE[k.split("_")[0]]}
    report["ok"] = not bad
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
