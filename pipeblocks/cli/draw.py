"""``pipeblocks draw``: a schedule's simulated timeline and memory as a .png, .svg or .pdf.

    $ pipeblocks draw zb-v -p 4 -m 8 -o zb-v.png
    $ pipeblocks draw 1f1b -p 4 -m 8 --cost f=1,b=2,w=0 --memory 0.75 -o 1f1b.svg
    $ pipeblocks draw zb-h1 -p 8 -m 16 --costs costs.json -o zb-h1.pdf
    $ pipeblocks draw --schedule my_schedule.csv -o mine.pdf
    $ pipeblocks draw --compare 1f1b,zb-h1,zb-v -p 4 -m 8 -o compare.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeblocks.cli.common import check_output, emit_json, finite_float
from pipeblocks.cli.memory import add_recompute_arg, apply_recompute
from pipeblocks.cli.offload import add_offload_args, apply_offload
from pipeblocks.cli.simulate import add_costs_args, build_costs
from pipeblocks.cli.source import add_source_args, schedule_from_args
from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, get
from pipeblocks.ir import Schedule, validate
from pipeblocks.sim import Simulation, simulate

# Bounds that keep a picture's pixels (and the memory to render them) finite and sane.
_MAX_DPI = 1200.0
_MAX_WIDTH_IN = 200.0


def _fraction(text: str) -> float:
    """argparse type: a number > 0 (a multiple of 1F1B's peak)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text}); e.g. 0.5 for half of 1F1B's")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "draw", help="draw a schedule's timeline and memory (png, svg, pdf)",
        description="Simulate a schedule and draw it: one row per rank on a true time axis, "
        "each pass coloured by kind and shaded by chunk, idle time grey, each rank's memory "
        "under it. With --compare, several schedules on one shared time axis.",
        epilog="examples: pipeblocks draw zb-v -p 4 -m 8 -o zb-v.png;  "
        "pipeblocks draw --compare 1f1b,zb-h1,zb-v -p 4 -m 8 -o compare.png",
    )
    add_source_args(p, verb="draw")
    p.add_argument("--compare", metavar="NAME1,NAME2,...", default=None,
                   help="draw several generators stacked on one shared time axis (with -p, -m; "
                   "--stages-per-rank applies to the generators that let v vary)")
    add_costs_args(p)  # --cost, --costs FILE, --model, --machine, --memory-model
    add_recompute_arg(p)
    add_offload_args(p)  # --offload auto meets --offload-budget (--memory only draws a line)
    p.add_argument("--memory", type=_fraction, default=None, metavar="FRACTION",
                   help="draw the memory budget line at FRACTION x 1F1B's peak")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the picture to write: .png, .svg or .pdf (by extension)")
    p.add_argument("--width", type=finite_float(0.0, strict=True), default=None, metavar="INCHES",
                   help="figure width in inches (default: fitted to the schedule, 8..18)")
    p.add_argument("--dpi", type=finite_float(0.0, strict=True), default=100.0, help="resolution of a .png (default 100)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _schedules(args: argparse.Namespace) -> list[Schedule]:
    sources = [flag for flag, value in (("NAME", args.name), ("--schedule", args.schedule),
                                        ("--compare", args.compare)) if value]
    if len(sources) != 1:
        got = " and ".join(sources) if sources else "none"
        raise SpecError(f"draw needs exactly one of NAME, --schedule FILE or --compare A,B "
                        f"(got {got})")
    if not args.compare:
        return [apply_recompute(schedule_from_args(args, "draw"), args)]
    if args.placement is not None:
        raise SpecError("--placement only applies to --schedule FILE.csv; a generator sets its "
                        "own")
    if args.p is None or args.m is None:
        missing = " and ".join(f for f, v in (("-p", args.p), ("-m", args.m)) if v is None)
        raise SpecError(f"draw --compare needs {missing}; e.g. -p 4 -m 8")
    names = [n.strip() for n in args.compare.split(",") if n.strip()]
    if not names:
        raise SpecError("--compare needs generator names separated by commas, e.g. 1f1b,zb-v")
    out = []
    for name in names:
        v = None if get(name).fixed_stages_per_rank else args.v
        out.append(apply_recompute(generate(name, args.p, args.m, v), args))
    return out


def run(args: argparse.Namespace) -> int:
    from pipeblocks.visual.figure import FORMATS, save_figure
    from pipeblocks.visual.timeline import compare_figure, timeline_figure

    out = Path(args.output)
    if out.suffix.lower() not in FORMATS:
        raise SpecError(f"-o {args.output}: the extension picks the format; use .png, .svg "
                        f"or .pdf")
    check_output(args.output)
    if not 0 < args.dpi <= _MAX_DPI:
        raise SpecError(f"--dpi must be > 0 and at most {_MAX_DPI:g} (got {args.dpi})")
    if args.width is not None and not args.width <= _MAX_WIDTH_IN:  # also refuses nan
        raise SpecError(f"--width must be at most {_MAX_WIDTH_IN:g} inches (got {args.width})")
    costs = build_costs(args)
    schedules = _schedules(args)
    sims: list[Simulation] = []
    for schedule in schedules:
        schedule = apply_offload(schedule, args, costs)
        validate(schedule)
        sims.append(simulate(schedule, costs, validate=False))
    if args.compare:
        fig = compare_figure(sims, memory_fraction=args.memory, width=args.width)
    else:
        fig = timeline_figure(sims[0], memory_fraction=args.memory, width=args.width)
    save_figure(fig, out, dpi=args.dpi)
    rows = [{"name": s.schedule.name, "spec": s.schedule.spec.describe(),
             "makespan": s.makespan, "bubble_rate": s.bubble_rate,
             "bubble_rate_global": s.bubble_rate_global, "peak_fraction": s.peak_fraction,
             "peak_memory": list(s.peak_memory)} for s in sims]
    if args.json:
        emit_json({"output": str(out), "schedules": rows})
        return 0
    for r in rows:
        print(f"{r['name'] or 'schedule'} ({r['spec']}): bubble {r['bubble_rate']:.1%}, "
              f"peak {r['peak_fraction']:.2f}x 1F1B, makespan {r['makespan']:g}")
    print(f"wrote {out}")
    return 0
