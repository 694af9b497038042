"""``python -m pipeblocks.cli.timing``: what the B/W split costs, stage by stage, for the small GPT.

Each stage of the small GPT is timed alone (CPU time of this thread, immune to other processes
on a busy machine; :func:`pipeblocks.runtime.profile.profile_stages` with the input path on):
F, the split B and W, the fused backward BW, and the input path alone (the least B can cost).
``(B + W) / BW`` is the cost of the split. ``--engine-w`` runs W through autograd engine calls
only, without the direct kernels of :mod:`pipeblocks.runtime.direct`, to compare the two;
``--json`` prints one object for scripts.

    $ python -m pipeblocks.cli.timing --stages 4 --dim 64 --json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict

__all__ = ["main"]

_WARMUP = 3  # reps dropped before the medians: the first passes allocate and warm the caches


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeblocks.cli.timing",
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
    from pipeblocks.models.gpt import GPTConfig
    from pipeblocks.models.profile import profile_small_gpt
    from pipeblocks.runtime.split import ends_layout

    cfg = GPTConfig(seq=args.seq, dim=args.dim, heads=args.heads, layers=args.layers)
    prof = profile_small_gpt(cfg, ends_layout(cfg.layers, args.stages),
                             microbatch=args.microbatch_size, reps=args.reps, warmup=_WARMUP,
                             clock="cpu", device="cpu", threads=args.threads,
                             direct=not args.engine_w, input_path=True)
    rows = prof.stages
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
