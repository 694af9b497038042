"""Recomputation as a memory knob (issue 21): what it saves and what it costs, simulated.

    $ .venv/bin/python benchmarks/bench_memory.py            # p=8 m=32
    $ .venv/bin/python benchmarks/bench_memory.py --quick    # p=4 m=8

Two parts, both from the simulator (no timing of this machine is involved, so the figures do
not depend on its load; the load average is recorded anyway):

- schedules: peak memory (fraction of 1F1B's) and makespan of 1f1b, zb-h1, v-min, v-half, zb-v
  with and without full recomputation (``NAME-r``), times f=b=w=1 per rank and the transformer
  memory preset (so a recomputed stage keeps its real input, s*b*h elements);
- pareto: ``pareto(p, m, recompute=True)`` under the same costs: the rungs below V-Min's peak,
  each with its simulated bubble and makespan;
- ``--runtime``: ``pipeblocks train --memory`` of the small GPT on 4 gloo ranks (1f1b and
  v-half, m=8, with and without ``--recompute all``): each rank's measured peak activation
  bytes against the simulator's, its per-stage memory measured once in this process
  (tests/runtime/test_recompute_memory.py does the same check).

Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, log, machine, print_table, write_result  # noqa: E402

from pipeblocks.generators import generate  # noqa: E402
from pipeblocks.search.pareto import pareto  # noqa: E402
from pipeblocks.sim import UniformCosts, memory_preset, simulate, with_memory  # noqa: E402

NAMES = ("1f1b", "zb-h1", "v-min", "v-half", "zb-v")


def schedules(p: int, m: int, costs: Any) -> list[dict[str, Any]]:
    out = []
    for name in NAMES:
        for label in (name, f"{name}-r"):
            sim = simulate(generate(label, p, m), costs)
            out.append({"schedule": label, "peak_fraction": round(sim.peak_fraction, 4),
                        "makespan": sim.makespan, "bubble_rate": round(sim.bubble_rate, 4)})
    return out


def front(p: int, m: int, costs: Any) -> dict[str, Any]:
    vmin = simulate(generate("v-min", p, m), costs).peak_fraction
    f = pareto(p, m, costs, recompute=True)
    below = [{"budget": round(pt.budget, 4), "peak_fraction": round(pt.result.peak_fraction, 4),
              "bubble_rate": round(pt.result.bubble_rate, 4), "makespan": pt.result.makespan,
              "schedule": pt.result.schedule.name} for pt in f.points if pt.budget < vmin - 1e-9]
    return {"v_min_peak_fraction": round(vmin, 4), "below_v_min": below}


def runtime() -> list[dict[str, Any]]:
    import json
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))
    from test_recompute_memory import _calibrate_plan

    rows = []
    for name in ("1f1b", "v-half"):
        for extra in ([], ["--recompute", "all"]):
            argv = ["--schedule", name, "--ranks", "4", "--microbatches", "8", "--steps", "1",
                    "--memory", "--json", *extra]
            log(f"train {' '.join(argv)}")
            out = subprocess.run([sys.executable, "-m", "pipeblocks", "train", *argv],
                                 capture_output=True, text=True, timeout=600, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])["peak_activation_bytes"]
            plan, costs = _calibrate_plan(argv)
            want = simulate(plan.schedule, costs).peak_memory
            rows.append({"schedule": name + ("-r" if extra else ""), "measured": got,
                         "simulated": list(want),
                         "ratio": [round(g / w, 4) for g, w in zip(got, want, strict=True)]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="p=4 m=8")
    ap.add_argument("--runtime", action="store_true",
                    help="also measure the small GPT on 4 gloo ranks (a few minutes)")
    args = ap.parse_args()
    p, m = (4, 8) if args.quick else (8, 32)
    costs = with_memory(UniformCosts(), memory_preset("transformer"))
    log(f"schedules p={p} m={m}")
    rows = schedules(p, m, costs)
    print_table(["schedule", "peak (x 1F1B)", "makespan", "bubble"],
                [[r["schedule"], r["peak_fraction"], r["makespan"], r["bubble_rate"]]
                 for r in rows])
    log("pareto with recompute")
    fr = front(p, m, costs)
    print(f"\nV-Min's peak: {fr['v_min_peak_fraction']} x 1F1B; rungs below it:")
    print_table(["budget", "peak", "bubble", "makespan", "schedule"],
                [[r["budget"], r["peak_fraction"], r["bubble_rate"], r["makespan"],
                  r["schedule"]] for r in fr["below_v_min"]])
    measured = runtime() if args.runtime else []
    if measured:
        print("\nsmall GPT, 4 gloo ranks: measured / simulated peak activation bytes per rank")
        print_table(["schedule", "measured / simulated"],
                    [[r["schedule"], " ".join(f"{x:.4f}" for x in r["ratio"])]
                     for r in measured])
    load = load_average()
    print(f"\nload average (1 min): {load}")
    payload = {"p": p, "m": m, "costs": "f=b=w=1 per rank, transformer memory preset",
               "schedules": rows, "pareto": fr, "runtime": measured, "load_average": load,
               "machine": machine()}
    log(f"wrote {write_result('memory', payload, args.quick)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
