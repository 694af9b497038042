"""Time the passes of real stages: F, B, W and the fused BW, in CPU time of this thread.

:func:`time_stages` runs each stage of a model alone on one microbatch (its input made by the
stages before it) and reports medians of ``time.thread_time`` (immune to other processes on a
busy machine): F, the split B and W, the fused backward, and the input path alone (the least B
can cost; BW minus it is the least W can cost), so that ``(b + w) / bw`` is the cost of the
B/W split. ``python -m pipeblocks.runtime.timing`` prints it for the small GPT (``--json``
for scripts; ``--engine-w`` runs W through autograd engine calls only, without the direct
kernels of :mod:`pipeblocks.runtime.direct`, to compare the two).

    >>> from pipeblocks.models.gpt import GPTConfig, TinyGPT
    >>> cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=2)
    >>> rows = time_stages(TinyGPT(cfg), 2, cfg, microbatch=2, reps=2)
    >>> [r.stage for r in rows], all(r.bw > 0 and r.b + r.w > 0 for r in rows)
    ([0, 1], True)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.models.split import ends_layout, split
from pipeblocks.runtime.stage import Stage

__all__ = ["PassTimes", "time_stages", "main"]


@dataclass(frozen=True, slots=True)
class PassTimes:
    """Median CPU milliseconds of one microbatch's passes on one stage."""

    stage: int
    f: float
    b: float
    w: float
    bw: float
    input_only: float  # the input path alone (autograd.grad w.r.t. the input, whole graph)

    @property
    def split_over_fused(self) -> float:
        """(B + W) / BW: what the B/W split costs over the ordinary backward."""
        return (self.b + self.w) / self.bw


def time_stages(
    model: nn.Sequential,
    num_stages: int,
    cfg: GPTConfig,
    microbatch: int = 4,
    reps: int = 30,
    layout: Sequence[int] | None = None,
    direct: bool = True,
) -> list[PassTimes]:
    """F, B, W and BW times of every stage of the small GPT split into ``num_stages``
    (``direct``: W's direct kernels on, as :class:`~pipeblocks.runtime.stage.Stage` has them)."""
    parts = split(model, num_stages, layout or ends_layout(cfg.layers, num_stages))
    tokens, targets = synthetic_batch(cfg, microbatch)
    inputs = [tokens]
    with torch.no_grad():
        for part in parts[:-1]:
            inputs.append(part(inputs[-1]))
    out = []
    for s, part in enumerate(parts):
        fused = Stage(part, s, num_stages, lm_loss, split=False)
        split_ = Stage(part, s, num_stages, lm_loss, split=True, direct=direct)
        grad = None if s == num_stages - 1 else torch.full_like(inputs[s + 1], 1e-3)
        f, b, w, bw, inp = [], [], [], [], []
        for _ in range(reps + 3):  # alternate, so that drifts hit both alike
            t0 = time.thread_time()
            fused.forward(0, inputs[s], targets)
            t1 = time.thread_time()
            fused.backward(0, grad)
            t2 = time.thread_time()
            split_.forward(0, inputs[s], targets)
            t3 = time.thread_time()
            split_.backward_input(0, grad)
            t4 = time.thread_time()
            split_.backward_weight(0)
            t5 = time.thread_time()
            f.append(t1 - t0)
            bw.append(t2 - t1)
            b.append(t4 - t3)
            w.append(t5 - t4)
            if s > 0:
                x = inputs[s].detach().requires_grad_(True)
                y = part(x)
                root = lm_loss(y, targets) if s == num_stages - 1 else y
                t6 = time.thread_time()
                torch.autograd.grad(root, x, grad_outputs=grad)
                inp.append(time.thread_time() - t6)
        part.zero_grad(set_to_none=True)
        med = [statistics.median(v[3:]) * 1e3 if v else 0.0 for v in (f, b, w, bw, inp)]
        out.append(PassTimes(s, *med))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeblocks.runtime.timing",
                                description="Per-stage F, B, W, BW CPU times of the small GPT.")
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--microbatch-size", type=int, default=4)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine-w", action="store_true",
                   help="W through autograd engine calls only (no direct kernels), to compare")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = GPTConfig(seq=args.seq, dim=args.dim, heads=args.heads, layers=args.layers)
    rows = time_stages(TinyGPT(cfg), args.stages, cfg, args.microbatch_size, args.reps,
                       direct=not args.engine_w)
    total = sum(r.b + r.w for r in rows) / sum(r.bw for r in rows)
    if args.json:
        print(json.dumps({
            "model": {"dim": cfg.dim, "seq": cfg.seq, "layers": cfg.layers, "heads": cfg.heads},
            "microbatch": args.microbatch_size, "stages": args.stages, "reps": args.reps,
            "w": "engine" if args.engine_w else "direct", "unit": "CPU ms, median",
            "rows": [{**asdict(r), "split_over_fused": r.split_over_fused} for r in rows],
            "split_over_fused": total,
        }))
        return 0
    print(f"small GPT dim={cfg.dim} seq={cfg.seq} layers={cfg.layers} microbatch="
          f"{args.microbatch_size}, {args.stages} stages; median CPU ms over {args.reps} reps; "
          f"W {'through engine calls' if args.engine_w else 'with its direct kernels'}")
    print(f"{'stage':>5} {'F':>8} {'B':>8} {'W':>8} {'B+W':>8} {'BW':>8} {'(B+W)/BW':>9} "
          f"{'input path':>10}")
    for r in rows:
        print(f"{r.stage:>5} {r.f:8.3f} {r.b:8.3f} {r.w:8.3f} {r.b + r.w:8.3f} {r.bw:8.3f} "
              f"{r.split_over_fused:9.3f} {r.input_only:10.3f}")
    print(f"all stages: (B+W)/BW = {total:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
