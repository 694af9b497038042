"""Rank dp x tp x pp layouts, microbatch sizes, recompute, optimizer sharding and schedules
for a model on a cluster (``pipeblocks plan``; docs/planner.md).

    $ pipeblocks plan --model layers=24,hidden=2048,heads=16,seq=2048,vocab=50304 \\
          --gpus 8 --global-batch 64 --top 5
    $ pipeblocks plan --model model.json --gpus 4 --global-batch 32   # from a profile
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeblocks.cli.common import emit_json, finite_float, positive_int
from pipeblocks.planner import PLAN_SCHEDULES, SHARDINGS, Cluster, Space, parse_bytes, plan
from pipeblocks.planner.cluster import DEFAULT_INTER, DEFAULT_INTRA, HALF_WORK, PEAK_EFFICIENCY
from pipeblocks.planner.report import document, export, table
from pipeblocks.sim.collectives import Link

__all__ = ["register"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4 (got {text!r})") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 (got {text!r})")
    return values


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,0.75 (got {text!r})") from None
    return tuple(v for v in values if v != 0)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(sub: Any) -> None:
    p = sub.add_parser("plan", help="rank parallel layouts, microbatching and schedules",
                       description=__doc__.split("\n\n")[0], epilog="See docs/planner.md.")
    p.add_argument("--model", required=True,
                   metavar="layers=L,hidden=H,heads=A,seq=S,vocab=V | FILE.json",
                   help="transformer numbers; optional ffn=F (default 4H), kv_heads=K "
                   "(default A), act_bytes=N (2), dropout=0|1 (1), flash=0|1 (0); or a model "
                   "file whose profile (a `pipeblocks profile -o` costs file) gives measured "
                   "per-layer times and bytes (docs/planner.md)")
    p.add_argument("--gpus", type=positive_int, required=True, help="GPUs in all")
    p.add_argument("--gpus-per-node", type=positive_int, default=8, help="default 8")
    p.add_argument("--gpu-memory", type=parse_bytes, default=80e9, metavar="SIZE",
                   help="memory per GPU, e.g. 80GB or 80GiB (default 80GB)")
    p.add_argument("--flops", type=finite_float(0, strict=True), default=312e12,
                   help="peak 16-bit FLOP/s per GPU (default 312e12, an A100)")
    p.add_argument("--global-batch", type=positive_int, required=True,
                   help="sequences per optimizer step")
    link = p.add_argument_group("links (achieved figures; bytes/s and seconds)")
    for name, d in (("intra", DEFAULT_INTRA), ("inter", DEFAULT_INTER)):
        where = "inside a node" if name == "intra" else "across nodes"
        link.add_argument(f"--{name}-bandwidth", type=finite_float(0, strict=True),
                          default=d.bandwidth, help=f"{where} (default {d.bandwidth:g})")
        link.add_argument(f"--{name}-latency", type=finite_float(0), default=d.latency,
                          help=f"{where} (default {d.latency:g})")
    p.add_argument("--peak-efficiency", type=finite_float(0, strict=True),
                   default=PEAK_EFFICIENCY, help="efficiency curve: the fraction of peak "
                   f"FLOP/s large layers reach (default {PEAK_EFFICIENCY})")
    p.add_argument("--half-work", type=finite_float(0, strict=True), default=HALF_WORK,
                   help="efficiency curve: FLOPs of the largest product at which a layer "
                   f"reaches half that (default {HALF_WORK:g})")
    p.add_argument("--reserved", type=parse_bytes, default=2e9, metavar="SIZE",
                   help="memory per GPU left free for context and buffers (default 2GB)")
    space = p.add_argument_group("the space (default: everything valid)")
    space.add_argument("--schedules", type=_names, default=PLAN_SCHEDULES, metavar="A,B",
                       help=f"schedules (default {','.join(PLAN_SCHEDULES)})")
    space.add_argument("--tp", type=_ints, default=None, metavar="1,2,..", help="TP degrees")
    space.add_argument("--pp", type=_ints, default=None, metavar="1,2,..", help="PP degrees")
    space.add_argument("--microbatch-size", type=_ints, default=None, metavar="1,2,..",
                       help="microbatch sizes")
    space.add_argument("--recompute", choices=("both", "on", "off"), default="both",
                       help="full activation recompute (default: try both)")
    space.add_argument("--sharding", type=_names, default=SHARDINGS, metavar="A,B",
                       help=f"optimizer-state sharding (default {','.join(SHARDINGS)})")
    space.add_argument("--search-budgets", type=_fractions, default=(0.6,), metavar="B,B",
                       help="budgets (fractions of 1F1B's peak) of the memory-limited search "
                       "tried on the fastest layouts near the memory (default 0.6; 0: none)")
    space.add_argument("--search-layouts", type=positive_int, default=4, metavar="N",
                       help="how many layouts the search tries (default 4)")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="plans to show (default 10; 0: all)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="write the best plan's schedule, train command and torchtitan settings")
    p.add_argument("--plot", metavar="FILE", default=None,
                   help="draw MFU against memory per GPU (needs matplotlib: the [plot] extra)")
    p.add_argument("--run", action="store_true",
                   help="train the best plan here with `pipeblocks train` (small models, "
                   "pipeline only; into --export DIR or plan-run/) and compare its memory")
    p.add_argument("--run-steps", type=positive_int, default=2, metavar="N",
                   help="training steps of --run (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def _progress(done: int, total: int) -> None:
    tty = sys.stderr.isatty()
    if tty or done == total or done * 10 // total != (done - 1) * 10 // total:
        bar = "#" * (20 * done // total)
        end = "\n" if done == total else ("\r" if tty else "\n")
        what = "searching" if done == total - 1 else "layouts"
        print(f"planning [{bar:<20}] {done}/{total} {what}", end=end, file=sys.stderr,
              flush=True)


def run(args: argparse.Namespace) -> int:
    cluster = Cluster(
        gpus=args.gpus, gpus_per_node=args.gpus_per_node, gpu_memory=args.gpu_memory,
        flops=args.flops, intra=Link(args.intra_bandwidth, args.intra_latency),
        inter=Link(args.inter_bandwidth, args.inter_latency),
        peak_efficiency=args.peak_efficiency, half_work=args.half_work, reserved=args.reserved)
    recompute = {"both": (False, True), "on": (True,), "off": (False,)}[args.recompute]
    space = Space(schedules=args.schedules, tp=args.tp, pp=args.pp,
                  microbatch_sizes=args.microbatch_size, recompute=recompute,
                  sharding=args.sharding, search_budgets=args.search_budgets,
                  search_shapes=args.search_layouts)
    result = plan(args.model, cluster=cluster, global_batch=args.global_batch, space=space,
                  progress=None if args.quiet else _progress)
    if args.export:
        export(result, args.export)
    if args.plot:
        from pipeblocks.visual.planmap import plot_plans

        points: dict[str, list[tuple[float, float, bool]]] = {}
        for pl in result.plans:
            points.setdefault(pl.schedule, []).append((pl.peak_memory_bytes / 1e9, pl.mfu,
                                                       pl.fits))
        plot_plans(points, cluster.gpu_memory / 1e9, args.plot)
    ran = None
    if args.run:
        from pipeblocks.planner.run import run_best

        ran = run_best(result, args.export or "plan-run", steps=args.run_steps)
    if args.json:
        doc = document(result, max(args.top, 0))
        if ran is not None:
            doc["run"] = ran
        emit_json(doc)
        return 0
    top = result.plans if args.top <= 0 else result.plans[: args.top]
    print(f"{len(result.plans)} plans for {args.gpus} GPUs; the best first (- : does not fit)")
    print(table(top))
    print("\nthe best of each schedule:")
    print(table(list(result.best_per_schedule().values()), rank=False))
    if result.best is None:
        print("\nno plan fits the GPU memory: use more GPUs, more memory or a smaller batch")
    if args.export:
        print(f"\nwrote the best plan to {args.export}/")
    if ran is not None:
        mib = [f"{b / 2**20:.2f}" for b in ran["measured_peak_activation_bytes"]]
        err = [f"{e:+.1%}" for e in ran["memory_error"]]
        print(f"\nran it: median step {ran['step_ms_median']:.1f} ms, loss {ran['loss'][-1]:.4f}"
              f"\npeak activation MiB per rank, measured: {', '.join(mib)}"
              f"\npredicted - measured: {', '.join(err)}")
    return 0
