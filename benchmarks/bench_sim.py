"""Simulator speed: generate + validate + simulate V-ZB at scale, and how time grows.

    $ .venv/bin/python benchmarks/bench_sim.py            # headline p=64 m=512, sweep to p=128
    $ .venv/bin/python benchmarks/bench_sim.py --quick    # small sizes (a smoke run)

Prints a table and writes benchmarks/results/sim.json. The headline target (issue 4) is
generate + validate + simulate of V-ZB at p=64, m=512 (196,608 passes) in under 2 s. The
sweep doubles p and m together (passes = 6·p·m) and fits time = c·passes^k by least squares on
logarithms; k near 1 means linear. Uses ``v-zb`` when registered, else ``zb-v`` (said so).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pipeblocks.generators import generate, names
from pipeblocks.ir import validate
from pipeblocks.sim import simulate

HEADLINE = (64, 512)
SWEEP = [(8, 64), (16, 128), (32, 256), (64, 512), (128, 1024)]
QUICK_HEADLINE = (16, 64)
QUICK_SWEEP = [(4, 16), (8, 32), (16, 64)]
TARGET_S = 2.0


def timed(name: str, p: int, m: int) -> dict[str, Any]:
    """Seconds spent generating, validating and simulating one schedule."""
    t0 = time.perf_counter()
    schedule = generate(name, p, m)
    t1 = time.perf_counter()
    validate(schedule)
    t2 = time.perf_counter()
    sim = simulate(schedule, validate=False)  # validated just above, timed apart
    t3 = time.perf_counter()
    return {"p": p, "m": m, "passes": schedule.num_actions, "generate_s": t1 - t0,
            "validate_s": t2 - t1, "simulate_s": t3 - t2, "total_s": t3 - t0,
            "bubble_rate": sim.bubble_rate, "peak_fraction": sim.peak_fraction}


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """k in y = c·x^k, least squares on logs."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den if den else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="headline runs (median kept)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim.json"),
                        help="where to write the JSON results")
    args = parser.parse_args(argv)

    name = "v-zb" if "v-zb" in names() else "zb-v"
    note = "" if name == "v-zb" else "v-zb is not registered; timing zb-v instead"
    if note:
        print(f"note: {note}")
    hp, hm = QUICK_HEADLINE if args.quick else HEADLINE
    runs = [timed(name, hp, hm) for _ in range(max(1, args.repeats))]
    head = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
    ok = head["total_s"] < TARGET_S
    print(f"headline: {name} p={hp} m={hm}, {head['passes']} passes, median of {len(runs)} runs")
    print(f"  generate {head['generate_s']:.3f} s  validate {head['validate_s']:.3f} s  "
          f"simulate {head['simulate_s']:.3f} s  total {head['total_s']:.3f} s  "
          f"(target < {TARGET_S} s: {'met' if ok else 'NOT met'})")

    sweep = [timed(name, p, m) for p, m in (QUICK_SWEEP if args.quick else SWEEP)]
    print(f"\n{'p':>4} {'m':>5} {'passes':>8} {'generate':>9} {'validate':>9} {'simulate':>9} "
          f"{'total':>8} {'us/pass':>8}")
    for r in sweep:
        print(f"{r['p']:>4} {r['m']:>5} {r['passes']:>8} {r['generate_s']:>9.3f} "
              f"{r['validate_s']:>9.3f} {r['simulate_s']:>9.3f} {r['total_s']:>8.3f} "
              f"{1e6 * r['total_s'] / r['passes']:>8.2f}")
    xs = [float(r["passes"]) for r in sweep]
    exponents = {phase: fit_exponent(xs, [r[f"{phase}_s"] for r in sweep])
                 for phase in ("generate", "validate", "simulate", "total")}
    print("fitted exponent k in time ~ passes^k: "
          + ", ".join(f"{k} {v:.2f}" for k, v in exponents.items()))

    out = {
        "schedule": name, "note": note, "target_s": TARGET_S, "headline": head,
        "headline_runs": runs, "headline_met": ok, "sweep": sweep, "exponents": exponents,
        "python": sys.version.split()[0], "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(), "quick": args.quick,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
