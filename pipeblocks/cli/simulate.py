"""``pipeblocks simulate``: time a schedule under a cost model and print its metrics.

    $ pipeblocks simulate zb-h1 -p 4 -m 8 --cost f=1,b=1,w=1,comm=0.1
    $ pipeblocks simulate 1f1b -p 4 -m 8 --costs costs.json --json
    $ pipeblocks simulate --schedule my.csv --memory-model unit --bubbles
    $ pipeblocks simulate 1f1b -p 4 -m 8 --fill 0.25x100 --fill-picture fill.png
    $ pipeblocks simulate 1f1b -p 8 -m 32 --model layers=32,hidden=4096,heads=32,seq=4096 \\
          --machine flops=4e14,bandwidth=5e10,latency=1e-5

Times come from one source: ``--cost`` (uniform, per rank), ``--stage-cost`` (uniform, per
stage), ``--costs FILE`` (per-stage or transformer
JSON, see docs/simulator.md) or ``--model`` with ``--machine`` (the transformer preset).
``--memory-model`` replaces the memory of that source with a preset.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pipeblocks.cli.common import add_cost_args, cost_of, emit_json, finite_float
from pipeblocks.cli.fill import add_fill_args, fill_json, fill_plan, print_fill
from pipeblocks.cli.memory import add_recompute_arg, apply_recompute
from pipeblocks.cli.offload import add_offload_args, apply_offload, offload_json
from pipeblocks.cli.source import add_source_args, schedule_from_args
from pipeblocks.errors import SpecError
from pipeblocks.ir import Schedule, validate
from pipeblocks.ir.offload import offload_label
from pipeblocks.ir.recompute import recompute_label
from pipeblocks.sim import (
    CostModel,
    Machine,
    TransformerCosts,
    TransformerModel,
    bubble_map,
    describe_costs,
    load_costs,
    memory_preset,
    simulate,
    summary,
    with_memory,
)
from pipeblocks.sim.memory import MEMORY_PRESETS

__all__ = ["register", "run", "add_costs_args", "build_costs"]

_MODEL_KEYS = {
    "layers": "layers", "hidden": "hidden", "heads": "heads", "seq": "seq_len",
    "seq_len": "seq_len", "vocab": "vocab", "microbatch": "microbatch_size",
    "microbatch_size": "microbatch_size", "bytes": "bytes_per_element",
    "bytes_per_element": "bytes_per_element",
}
_MACHINE_KEYS = {"flops": "flops", "bandwidth": "bandwidth", "latency": "latency"}


def _pairs(flag: str, text: str, keys: dict[str, str], ints: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in keys:
            raise SpecError(f"{flag} item {part!r} is not KEY=NUMBER with KEY in "
                            f"{', '.join(sorted(set(keys)))}")
        try:
            number = float(v)
        except ValueError:
            raise SpecError(f"{flag} {k}={v!r} is not a number") from None
        field = keys[k]
        out[field] = int(number) if ints and field != "bytes_per_element" and number.is_integer() else number
    return out


def _make(cls: Any, flag: str, fields: dict[str, Any], example: str) -> Any:
    """``cls(**fields)``; a missing required field is a SpecError naming it, not a TypeError."""
    keys: dict[str, str] = {}  # field -> its shortest key ("seq" for seq_len)
    for k, v in sorted((_MODEL_KEYS | _MACHINE_KEYS).items(), key=lambda kv: -len(kv[0])):
        keys[v] = k
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.name not in fields]
    if required:
        need = ", ".join(keys.get(f, f) for f in required)
        raise SpecError(f"{flag} lacks {need}; write e.g. {flag} {example}")
    return cls(**fields)


def add_costs_args(parser: argparse.ArgumentParser) -> None:
    """--cost, --costs FILE, --model, --machine, --memory-model (shared with ``compare``)."""
    add_cost_args(parser)
    parser.add_argument("--costs", metavar="FILE", default=None,
                        help="per-stage costs or transformer preset as JSON (docs/simulator.md)")
    parser.add_argument("--model", metavar="layers=L,hidden=H,heads=A,seq=S[,vocab=V,"
                        "microbatch=B,bytes=E]", default=None,
                        help="transformer model numbers (times need --machine too)")
    parser.add_argument("--machine", metavar="flops=X[,bandwidth=Y,latency=Z]", default=None,
                        help="device FLOP/s, link bytes/s and latency (s) for --model")
    parser.add_argument("--memory-model", choices=MEMORY_PRESETS, default=None,
                        help="replace the memory of the cost source with a preset "
                        "(default: the source's own; unit for --cost)")


def build_costs(args: argparse.Namespace) -> CostModel:
    """The cost model the options describe; conflicting options are a SpecError."""
    sources = [flag for flag, value in (("--cost", args.cost),
                                        ("--stage-cost", args.stage_cost),
                                        ("--costs", args.costs),
                                        ("--machine", args.machine)) if value]
    if len(sources) > 1:
        raise SpecError(f"give one source of times, not {' and '.join(sources)}")
    model = _make(TransformerModel, "--model", _pairs("--model", args.model, _MODEL_KEYS, True),
                  "layers=24,hidden=2048,heads=16,seq=2048") if args.model else None
    costs: CostModel
    if args.machine:
        if model is None:
            raise SpecError("--machine needs --model (the transformer whose passes it times)")
        costs = TransformerCosts(model, _make(Machine, "--machine", _pairs(
            "--machine", args.machine, _MACHINE_KEYS, False), "flops=3e14"))
    elif args.costs:
        costs = load_costs(args.costs)
    else:
        costs = cost_of(args)
    if model is not None and not args.machine and args.memory_model != "transformer":
        raise SpecError("--model without --machine only sets the memory: add --memory-model "
                        "transformer, or --machine flops=... for times too")
    if args.memory_model == "transformer" and model is None and isinstance(costs, TransformerCosts):
        model = costs.model
    if args.memory_model:
        costs = with_memory(costs, memory_preset(args.memory_model, model))
    return costs


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "simulate", help="time a schedule and report bubbles and memory",
        description="Simulate a generated schedule (NAME -p P -m M) or a schedule file "
        "(--schedule FILE) under a cost model; print makespan, bubble rates, busy/idle time "
        "and peak memory per rank.")
    add_source_args(p, verb="simulate")
    add_costs_args(p)
    add_recompute_arg(p)
    add_offload_args(p)
    p.add_argument("--bubbles", action="store_true",
                   help="also list every idle interval per rank (the bubble map)")
    p.add_argument("--capacity", type=finite_float(), default=None,
                   help="memory per rank for the bubble map's free column (default: max peak)")
    add_fill_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _schedule(args: argparse.Namespace, costs: CostModel | None = None) -> Schedule:
    schedule = apply_recompute(schedule_from_args(args, "simulate"), args)
    schedule = apply_offload(schedule, args, costs)  # cli/offload.py
    validate(schedule)
    return schedule


def run(args: argparse.Namespace) -> int:
    costs = build_costs(args)
    schedule = _schedule(args, costs)
    sim = simulate(schedule, costs, validate=False)  # _schedule validated it
    bubbles = bubble_map(sim, args.capacity) if args.bubbles else None
    fill = fill_plan(args, sim)
    if args.json:
        out = {"costs": describe_costs(costs), **summary(sim),
               "recompute": sorted(schedule.recompute), **offload_json(schedule, sim)}
        if fill is not None:
            out.update(fill_json(fill))
        if bubbles is not None:
            out["bubbles"] = [[{"start": b.start, "end": b.end, "held": b.held, "free": b.free,
                                "kind": b.kind.value} for b in rank] for rank in bubbles]
        emit_json(out)
        return 0
    unit = sim.memory_unit
    print(f"# {schedule.name or args.schedule}  {schedule.spec.describe()}  "
          f"{schedule.num_actions} passes  costs: {describe_costs(costs)}"
          + (f"  {recompute_label(schedule)}" if schedule.recompute else "")
          + (f"  {offload_label(schedule)}" if schedule.offload else ""))
    print(f"makespan            {sim.makespan:.6g}")
    print(f"bubble rate         {sim.bubble_rate:.4f}  (papers' metric: max span vs busy)")
    print(f"bubble rate global  {sim.bubble_rate_global:.4f}  (all ranks from 0 to makespan)")
    print(f"peak fraction       {sim.peak_fraction:.4f}  (max peak / 1F1B's peak "
          f"{sim.reference_peak:.6g} {unit})")
    print(f"{'rank':>4} {'busy':>10} {'idle':>10} {'span':>10} {'peak':>12} "
          f"{'peak (stage-act)':>16}")
    for r in range(schedule.spec.num_ranks):
        print(f"{r:>4} {sim.busy[r]:>10.4g} {sim.idle[r]:>10.4g} {sim.span[r]:>10.4g} "
              f"{sim.peak_memory[r]:>12.4g} {sim.peak_stage_activations[r]:>16.4g}")
    print(f"memory unit: {unit}")
    if sim.host_peak:
        print("host memory peak per rank: " + ", ".join(f"{h:.4g}" for h in sim.host_peak))
    if fill is not None:
        print_fill(fill)
    if bubbles is not None:
        print("bubble map (rank, kind, start, end, held, free):")
        for rank in bubbles:
            for b in rank:
                print(f"  {b.rank:>3} {b.kind.value:5} {b.start:>10.4g} {b.end:>10.4g} "
                      f"{b.held:>10.4g} {b.free:>10.4g}")
    return 0
