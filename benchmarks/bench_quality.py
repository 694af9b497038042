"""Schedule quality: the compare table and the memory/bubble Pareto front, unit and 7B costs.

    $ .venv/bin/python benchmarks/bench_quality.py            # p = 8 and 16, m = 4p
    $ .venv/bin/python benchmarks/bench_quality.py --quick    # p = 4 only

Everything here is simulated (no torch): for each p and cost model, ``pipeblocks compare``'s
library path (:func:`pipeblocks.cli.compare.compare`) simulates every generator that accepts
(p, m), and the memory-limited search (``pipeblocks.search.search``, when it is importable) is
run at budgets from a quarter of 1F1B's peak to twice it, giving the Pareto front of peak memory
against bubble rate with the named generators marked.

Cost models: ``unit`` (F = B = W = 1, no transfer cost, unit memory) and ``7b``: the transformer
preset (:mod:`pipeblocks.sim.transformer`) for a 7B-class GPT (32 layers, hidden 4096, 32 heads,
sequence 4096, vocabulary 32000, microbatch 1, 2-byte activations) on devices of 4e14 FLOP/s
sustained with 50 GB/s, 10 µs links: times in seconds, memory in bytes. Writes
``benchmarks/results/quality.json`` and ``docs/img/bench_pareto-p<P>-<costs>.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

from pipeblocks.cli.compare import compare  # noqa: E402
from pipeblocks.errors import PipeblocksError  # noqa: E402
from pipeblocks.ir import PipelineSpec, Placement  # noqa: E402
from pipeblocks.sim import (  # noqa: E402
    CostModel,
    Machine,
    TransformerCosts,
    TransformerModel,
    UniformCosts,
    simulate,  # noqa: E402
)

NAME = "quality"
SIZES = (8, 16)
QUICK_SIZES = (4,)
MODEL_7B = TransformerModel(layers=32, hidden=4096, heads=32, seq_len=4096, vocab=32000,
                            microbatch_size=1, bytes_per_element=2)
MACHINE = Machine(flops=4e14, bandwidth=5e10, latency=1e-5)
BUDGETS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 1.75, 2.0)
SEARCH_CAP_S = 120.0  # all budgets of one (p, costs) together


def cost_models() -> dict[str, CostModel]:
    return {"unit": UniformCosts(), "7b": TransformerCosts(MODEL_7B, MACHINE)}


def front_points(p: int, m: int, costs: CostModel) -> tuple[list[dict[str, Any]], str]:
    """The search's best schedule at each budget (peak fraction, bubble rate), and a note."""
    fn, note = c.search_api()
    if fn is None:
        return [], note
    points = []
    start = time.perf_counter()
    for budget in BUDGETS:
        if time.perf_counter() - start > SEARCH_CAP_S:
            note = f"budgets above {points[-1]['budget'] if points else '-'} skipped: time cap"
            break
        spec = PipelineSpec(p, m, 2, Placement.V)
        t0 = time.perf_counter()
        try:
            schedule = fn(spec, costs, budget)
        except PipeblocksError as e:  # below the smallest feasible budget
            points.append({"budget": budget, "error": str(e).splitlines()[0]})
            continue
        sim = simulate(schedule, costs)
        points.append({"budget": budget, "name": schedule.name, "peak_fraction": sim.peak_fraction,
                       "bubble_rate": sim.bubble_rate, "makespan": sim.makespan,
                       "search_s": time.perf_counter() - t0})
    return points, note


def run(quick: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": [], "model_7b": {f: getattr(MODEL_7B, f) for f in
                                                     MODEL_7B.__dataclass_fields__},
                           "machine": {"flops": MACHINE.flops, "bandwidth": MACHINE.bandwidth,
                                       "latency": MACHINE.latency}}
    for p in QUICK_SIZES if quick else SIZES:
        m = 4 * p
        for label, costs in cost_models().items():
            c.log(f"quality: compare p={p} m={m} costs={label}")
            rows, skipped = compare(p, m, costs)
            c.log(f"quality: search front p={p} m={m} costs={label}")
            points, note = front_points(p, m, costs)
            case = {"p": p, "m": m, "costs": label, "rows": rows, "not_applicable": skipped,
                    "front": points, "front_note": note}
            case["plot"] = str(plot(case, quick).relative_to(c.ROOT))
            out["cases"].append(case)
    c.write_result(NAME, out, quick)
    return out


def plot(case: dict[str, Any], quick: bool) -> Path:
    from pipeblocks.visual.pareto import plot_pareto

    named = {r["name"]: (r["peak_fraction"], r["bubble_rate"]) for r in case["rows"]}
    pts = [(q["peak_fraction"], q["bubble_rate"]) for q in case["front"] if "error" not in q]
    title = (f"p={case['p']} m={case['m']}, {case['costs']} costs"
             + ("" if pts else " (search not available: named schedules only)"))
    path = c.image_path(f"pareto-p{case['p']}-{case['costs']}", quick)
    plc = c.pyplot()
    plot_pareto(pts, named, path, title=title, dpi=100)
    plc.close("all")
    return path


def markdown(result: dict[str, Any]) -> str:
    m7 = result["model_7b"]
    lines = [
        "## Schedule quality (simulated)",
        "",
        "`pipeblocks compare`'s rows (every generator that accepts (p, m), m = 4p) under two "
        "cost models, and the memory-limited search's Pareto front. *bubble* is the papers' "
        "metric (max span vs busy), *global* counts every rank from 0 to the makespan, *peak* "
        "is the worst rank's activation memory as a fraction of 1F1B's.",
        "",
        "- **unit**: F = B = W = 1, no transfer cost, unit memory (DESIGN.md section 5).",
        f"- **7b**: the transformer preset for a 7B-class GPT ({m7['layers']} layers, hidden "
        f"{m7['hidden']}, {m7['heads']} heads, sequence {m7['seq_len']}, vocabulary "
        f"{m7['vocab']}, microbatch {m7['microbatch_size']}, {m7['bytes_per_element']:g}-byte "
        f"activations) on devices of {result['machine']['flops']:.0e} FLOP/s with "
        f"{result['machine']['bandwidth'] / 1e9:g} GB/s, {result['machine']['latency'] * 1e6:g} "
        f"µs links; makespan in seconds, memory in bytes (the last stage carries the output "
        f"layer).",
        "",
    ]
    for case in result["cases"]:
        lines += [f"### p = {case['p']}, m = {case['m']}, {case['costs']} costs", ""]
        head = ["schedule", "v", "formula", "bubble", "global", "peak", "makespan", "p2p"]
        rows = [[r["name"], r["stages_per_rank"], r["formula_bubble_rate"], r["bubble_rate"],
                 r["bubble_rate_global"], r["peak_fraction"], r["makespan"], r["p2p_transfers"]]
                for r in case["rows"]]
        lines += [c.table(head, rows), ""]
        if case["not_applicable"]:
            lines += ["Not applicable: " + "; ".join(
                f"{s['name']} ({s['reason'].split(';')[0]})" for s in case["not_applicable"]), ""]
        ok = [q for q in case["front"] if "error" not in q]
        if ok:
            lines += ["Search (V placement) at each memory budget (fraction of 1F1B's peak):", ""]
            lines += [c.table(["budget", "peak", "bubble", "makespan", "search s"],
                              [[q["budget"], q["peak_fraction"], q["bubble_rate"], q["makespan"],
                                q["search_s"]] for q in ok]), ""]
            bad = [q for q in case["front"] if "error" in q]
            if bad:
                lines += [f"Infeasible budgets: {', '.join(str(q['budget']) for q in bad)} "
                          f"({bad[0]['error']}).", ""]
        if case["front_note"]:
            lines += [f"Note: {case['front_note']}; the plot shows the named schedules only.", ""]
        lines += [f"![pareto p={case['p']} {case['costs']}]"
                  f"({Path(case['plot']).relative_to('docs')})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="p = 4 only: a smoke run")
    args = ap.parse_args(argv)
    result = run(args.quick)
    for case in result["cases"]:
        print(f"\np={case['p']} m={case['m']} costs={case['costs']}")
        c.print_table(["schedule", "v", "bubble", "global", "peak", "makespan"],
                      [[r["name"], r["stages_per_rank"], r["bubble_rate"],
                        r["bubble_rate_global"], r["peak_fraction"], r["makespan"]]
                       for r in case["rows"]])
        if case["front_note"]:
            print(f"note: {case['front_note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
