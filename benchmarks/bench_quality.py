"""Schedule quality: the compare table and the memory/bubble Pareto front, unit and 7B costs.

    $ .venv/bin/python benchmarks/bench_quality.py            # p = 8 and 16, m = 4p
    $ .venv/bin/python benchmarks/bench_quality.py --quick    # p = 4 only

Everything here is simulated (no torch): for each p and cost model, ``pipeblocks compare``'s
library path (:func:`pipeblocks.cli.compare.compare`) simulates every generator that accepts
(p, m), and the memory-limited search (``pipeblocks.search.search``, when it is importable) is
run at every budget from the smallest feasible one to twice 1F1B's peak
(``pipeblocks.search.pareto.pareto``), giving the Pareto front of peak memory against bubble
rate with the named generators marked.

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
from pipeblocks.sim import (  # noqa: E402
    CostModel,
    Machine,
    TransformerCosts,
    TransformerModel,
    UniformCosts,  # noqa: E402
)

NAME = "quality"
SIZES = (8, 16)
QUICK_SIZES = (4,)
MODEL_7B = TransformerModel(layers=32, hidden=4096, heads=32, seq_len=4096, vocab=32000,
                            microbatch_size=1, bytes_per_element=2)
MACHINE = Machine(flops=4e14, bandwidth=5e10, latency=1e-5)


def cost_models() -> dict[str, CostModel]:
    return {"unit": UniformCosts(), "7b": TransformerCosts(MODEL_7B, MACHINE)}


def front_points(p: int, m: int, costs: CostModel) -> tuple[dict[str, Any], str]:
    """``pipeblocks.search.pareto.pareto``: the best schedule at every budget, and a note."""
    fn, note = c.search_api("pareto")
    if fn is None:
        return {}, note
    t0 = time.perf_counter()
    fr = fn(p, m, costs, family="all", named=False)
    seconds = time.perf_counter() - t0
    points = [{"budget": pt.budget, "name": pt.result.schedule.name, "family": pt.result.family,
               "peak_fraction": pt.result.peak_fraction, "bubble_rate": pt.result.bubble_rate,
               "makespan": pt.result.makespan} for pt in fr.points]
    return {"points": points, "candidates": [list(x) for x in fr.candidates],
            "seconds": seconds}, note


def run(quick: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": [], "model_7b": {f: getattr(MODEL_7B, f) for f in
                                                     MODEL_7B.__dataclass_fields__},
                           "device_7b": {"flops": MACHINE.flops, "bandwidth": MACHINE.bandwidth,
                                       "latency": MACHINE.latency}}
    for p in QUICK_SIZES if quick else SIZES:
        m = 4 * p
        for label, costs in cost_models().items():
            c.log(f"quality: compare p={p} m={m} costs={label}")
            rows, skipped = compare(p, m, costs)
            c.log(f"quality: search front p={p} m={m} costs={label}")
            front, note = front_points(p, m, costs)
            case = {"p": p, "m": m, "costs": label, "rows": rows, "not_applicable": skipped,
                    "front": front, "front_note": note}
            case["plot"] = str(plot(case, quick).relative_to(c.ROOT))
            out["cases"].append(case)
    c.write_result(NAME, out, quick)
    return out


def plot(case: dict[str, Any], quick: bool) -> Path:
    from pipeblocks.visual.pareto import plot_pareto

    named = {r["name"]: (r["peak_fraction"], r["bubble_rate"]) for r in case["rows"]}
    pts = [tuple(x) for x in case["front"].get("candidates", [])]
    title = (f"p={case['p']} m={case['m']}, {case['costs']} costs"
             + ("" if pts else " (search not available: named schedules only)"))
    path = c.image_path(f"pareto-p{case['p']}-{case['costs']}", quick)
    plc = c.pyplot()
    plot_pareto(pts, named, path, title=title, dpi=100)
    plc.close("all")
    return path


def markdown(result: dict[str, Any], md_dir: Path = c.ROOT / "docs") -> str:
    m7 = result["model_7b"]
    lines = [
        "## Schedule quality (simulated)",
        "",
        "`pipeblocks compare`'s rows (every generator that accepts (p, m), m = 4p) under two "
        "cost models, and the memory-limited search's Pareto front. *bubble* is the papers' "
        "metric (max span vs busy), *global* counts every rank from 0 to the makespan, *peak* "
        "is the worst rank's activation memory as a fraction of 1F1B's.",
        "",
        "- **unit**: F = B = W = 1, no transfer cost, unit memory ([design.md, 'Closed forms']"
        "(design.md#closed-forms)).",
        f"- **7b**: the transformer preset for a 7B-class GPT ({m7['layers']} layers, hidden "
        f"{m7['hidden']}, {m7['heads']} heads, sequence {m7['seq_len']}, vocabulary "
        f"{m7['vocab']}, microbatch {m7['microbatch_size']}, {m7['bytes_per_element']:g}-byte "
        f"activations) on devices of {result['device_7b']['flops']:.0e} FLOP/s with "
        f"{result['device_7b']['bandwidth'] / 1e9:g} GB/s, "
        f"{result['device_7b']['latency'] * 1e6:g} µs links; makespan in seconds, memory in bytes (the last stage carries the output "
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
        front = case["front"]
        if front:
            lines += [f"The search's front (`pareto(p, m, costs, family='all', named=False)`, "
                      f"{front['seconds']:.1f} s, {len(front['candidates'])} candidates "
                      f"simulated): the best schedule found at each budget (a fraction of "
                      f"1F1B's peak), every {4 if case['p'] >= 16 else 2}nd rung shown:", ""]
            step = 4 if case["p"] >= 16 else 2
            pts = front["points"][::step]
            if front["points"] and front["points"][-1] not in pts:
                pts.append(front["points"][-1])
            lines += [c.table(["budget", "peak", "bubble", "makespan", "schedule"],
                              [[q["budget"], q["peak_fraction"], q["bubble_rate"],
                                q["makespan"], f"`{q['name']}`"] for q in pts]), ""]
        if case["front_note"]:
            lines += [f"Note: {case['front_note']}; the plot shows the named schedules only.", ""]
        lines += [f"![pareto p={case['p']} {case['costs']}]"
                  f"({c.link(case['plot'], md_dir)})", ""]
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
