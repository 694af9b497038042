"""``pipeblocks profile``: measure per-stage F, B, W times and activation memory, write costs.

    $ pipeblocks profile --model tiny-gpt --ranks 4 -o costs.json
    $ pipeblocks search -p 4 -m 8 --memory 0.5 --costs costs.json -o s.json
    $ pipeblocks train --schedule-file s.json --ranks 4 --steps 10

The model is split exactly as ``pipeblocks train`` splits it for a schedule of p * v stages
(the same ``--layers``, ``--layout``, ``--dim``, ... options and defaults), and each stage is
profiled alone in this process, one after the other, on one microbatch
(:func:`pipeblocks.runtime.profile.profile_stages`): median F, B, W and fused BW times (ms) and
the bytes autograd saves (``mem_f``) and still holds after B (``mem_w``). ``-o`` writes them as
a per-stage costs file (docs/simulator.md) for ``simulate``, ``search`` and ``draw``.
``--stages-per-rank`` defaults to 2: the V-shape schedules, the ones a memory budget below
1F1B's needs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from pipeblocks.cli.common import (
    check_output,
    emit_json,
    one_line_errors,
    positive_int,
    write_output,
)
from pipeblocks.cli.train import MODELS
from pipeblocks.errors import SpecError

__all__ = ["register", "run", "MODEL_FLAGS", "DEFAULTS"]

# The model options that must match between `profile` and `train` (same names, same defaults).
MODEL_FLAGS = ("layers", "layout", "dim", "heads", "seq", "vocab", "microbatch_size", "seed")
DEFAULTS: dict[str, Any] = {"layers": None, "layout": None, "dim": 64, "heads": 4, "seq": 32,
                            "vocab": 256, "microbatch_size": 4, "seed": 0}


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (got {text})")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "profile", help="measure per-stage F, B, W times and memory; write a costs file",
        description="Profile the small GPT split into p * v stages as `pipeblocks train` "
        "splits it: per-stage F, B, W (and fused BW) times in ms and activation memory in "
        "bytes, measured in this process, stage after stage. -o writes a costs file for "
        "simulate, search and draw (--costs).",
        epilog="example: pipeblocks profile --ranks 4 -o costs.json && pipeblocks search -p 4 "
        "-m 8 --memory 0.5 --costs costs.json -o s.json && pipeblocks train --schedule-file "
        "s.json --ranks 4",
    )
    p.add_argument("--model", choices=MODELS, default="tiny-gpt", help="model (default tiny-gpt)")
    p.add_argument("-p", "--ranks", type=positive_int, required=True,
                   help="pipeline ranks the schedule will have")
    p.add_argument("--stages-per-rank", type=positive_int, default=2, metavar="V",
                   help="model chunks per rank (default 2, the V-shape schedules)")
    p.add_argument("-m", "--microbatches", type=positive_int, default=None,
                   help="microbatches per step (only shown in the suggested next commands)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="transformer blocks (default: as train, the multiple of the stage "
                   "count >= 8)")
    p.add_argument("--layout", default=None, metavar="N,N,...",
                   help="blocks per stage, comma-separated (default: even)")
    p.add_argument("--dim", type=positive_int, default=DEFAULTS["dim"],
                   help=f"model width (default {DEFAULTS['dim']})")
    p.add_argument("--heads", type=positive_int, default=DEFAULTS["heads"],
                   help=f"attention heads (default {DEFAULTS['heads']})")
    p.add_argument("--seq", type=positive_int, default=DEFAULTS["seq"],
                   help=f"sequence length (default {DEFAULTS['seq']})")
    p.add_argument("--vocab", type=positive_int, default=DEFAULTS["vocab"],
                   help=f"vocabulary (default {DEFAULTS['vocab']})")
    p.add_argument("--microbatch-size", type=positive_int, default=DEFAULTS["microbatch_size"],
                   metavar="B", help="sequences per microbatch (default "
                   f"{DEFAULTS['microbatch_size']})")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed of the weights and the data")
    p.add_argument("--reps", type=positive_int, default=20,
                   help="timed repetitions per stage; the median is kept (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default 3)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time (default; synchronised on CUDA); cpu: this "
                   "thread's CPU time (CPU only, immune to a busy machine)")
    p.add_argument("--idle-ms", type=_non_negative, default=0.0, metavar="MS",
                   help="sleep before every timed pass (default 0): a pass that follows a "
                   "wait in a pipeline may run slower than back to back")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run the stages (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1, as each rank of `train`)")
    p.add_argument("--comm", type=_non_negative, default=0.0, metavar="MS",
                   help="one transfer between two ranks, in ms, written as the costs' comm "
                   "(default 0; not measured here)")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write the costs file (JSON) here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    one_line_errors(p)


def _suggest(args: argparse.Namespace, out: str) -> list[str]:
    """The next commands of the loop, with the model options that differ from the defaults."""
    m = args.microbatches or 2 * args.ranks
    model = []
    for flag in MODEL_FLAGS:
        value = getattr(args, flag)
        if value is not None and value != DEFAULTS[flag]:
            model.append(f"--{flag.replace('_', '-')} {value}")
    tail = (" " + " ".join(model)) if model else ""
    return [f"pipeblocks search -p {args.ranks} -m {m} --memory 0.5 --costs {out} -o s.json",
            f"pipeblocks train --schedule-file s.json --ranks {args.ranks} --steps 10{tail}"]


def run(args: argparse.Namespace) -> int:
    if args.warmup < 0:
        raise SpecError(f"--warmup must be >= 0 (got {args.warmup})")
    if args.output:  # before profiling: the costs must have somewhere to go
        check_output(args.output)
    # torch only on this path (and only inside pipeblocks.runtime), so `pipeblocks --help`
    # works without it
    from pipeblocks.cli.tinygpt import layout_of, model_config
    from pipeblocks.models.profile import profile_small_gpt

    num_stages = args.ranks * args.stages_per_rank
    cfg = model_config(args, num_stages)
    prof = profile_small_gpt(cfg, layout_of(args, cfg, num_stages),
                             microbatch=args.microbatch_size, seed=args.seed, reps=args.reps,
                             warmup=args.warmup, clock=args.clock, device=args.device,
                             threads=args.threads, comm_ms=args.comm,
                             idle_ms=args.idle_ms)
    if args.output:
        write_output(args.output, json.dumps(prof.costs(), indent=2) + "\n")
    if args.json:
        out = prof.summary()
        out.update({"model": args.model, "ranks": args.ranks,
                    "stages_per_rank": args.stages_per_rank, "layers": cfg.layers,
                    "microbatch_size": args.microbatch_size, "output": args.output})
        emit_json(out)
        return 0
    print(f"# {args.model}: {cfg.layers} blocks, dim {cfg.dim}, seq {cfg.seq}, microbatch "
          f"{args.microbatch_size}; {num_stages} stages (p={args.ranks}, v={args.stages_per_rank})"
          f" on {prof.device}; median of {args.reps} ({args.clock} clock)")
    print(f"{'stage':>5} {'F ms':>8} {'B ms':>8} {'W ms':>8} {'BW ms':>8} {'(B+W)/BW':>9} "
          f"{'mem_f MiB':>10} {'mem_w MiB':>10}")
    for s in prof.stages:
        print(f"{s.stage:>5} {s.f:8.3f} {s.b:8.3f} {s.w:8.3f} {s.bw:8.3f} "
              f"{s.split_over_fused:9.3f} {s.mem_f / 2**20:10.3f} {s.mem_w / 2**20:10.3f}")
    if args.output:
        print(f"wrote {args.output}; next:", file=sys.stdout)
        for line in _suggest(args, args.output):
            print(f"  {line}")
    return 0
