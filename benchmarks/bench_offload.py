"""Activation offload: emulated measured / simulated step, and where offload is free (issue 21).

    $ .venv/bin/python benchmarks/bench_offload.py              # emulated runs + the table
    $ .venv/bin/python benchmarks/bench_offload.py --steps 3    # a smoke run
    $ .venv/bin/python benchmarks/bench_offload.py --sim-only   # only the simulated table

**Emulated.** Each run is ``pipeblocks train --ranks 4 --microbatches 8 --emulate-ms 20
--offload all --emulate-link GB/S``: every pass sleeps 20 ms, and every offload and reload
sleeps its bytes (an emulated stage's output, 32 KiB for the default model) over the emulated
link on a side thread, overlapping the passes (runtime/offload.py). The simulator times the
same copies on its host link (sim/offload.py). Target: measured / simulated <= 1.05, for
1f1b and v-half, with copies of half a pass and of two passes.

**Where offload is free** (simulated, unit costs, p = 4, m = 8 and p = 8, m = 32): every
eligible pair offloaded, at link speeds k = 4 .. 1/4, where k is how much the link moves per
unit of time relative to what the rank's forwards produce (k = 1: a copy of one microbatch's
activations takes as long as their forward). Slowdown = makespan with offload / without; peak
= device peak with offload / without. Writes benchmarks/results/offload.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET = 1.05
ACT_BYTES = 4 * 32 * 64 * 4  # the default model's activation per microbatch (float32)
CASES = (("1f1b", 0.5), ("1f1b", 2.0), ("v-half", 0.5), ("v-half", 2.0))  # (schedule, copy/pass)
TABLE_SCHEDULES = ("gpipe", "1f1b", "zb-h1", "v-half", "v-min", "zb-v")
SPEEDS = (4.0, 2.0, 1.0, 0.5, 0.25)


def run(name: str, copy_passes: float, steps: int, ms: float) -> dict[str, Any]:
    """One emulated run's JSON report: copies of ``copy_passes`` passes each."""
    gb_s = ACT_BYTES / (copy_passes * ms / 1e3) / 1e9
    cmd = [sys.executable, "-m", "pipeblocks", "train", "--schedule", name, "--ranks", "4",
           "--microbatches", "8", "--steps", str(steps), "--emulate-ms", str(ms),
           "--offload", "all", "--emulate-link", repr(gb_s), "--json"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if res.returncode:
        raise SystemExit(f"{name}: {res.stderr.strip()[-500:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def free_table() -> list[dict[str, Any]]:
    """Simulated slowdown and device peak of offloading every eligible pair."""
    from pipeblocks.generators import generate
    from pipeblocks.ir.moves import OffloadLink
    from pipeblocks.ir.offload import with_offload
    from pipeblocks.sim import simulate

    rows = []
    for p, m in ((4, 8), (8, 32)):
        for name in TABLE_SCHEDULES:
            s = generate(name, p, m)
            plain = simulate(s)
            per_rank = plain.reference_peak / p  # what a rank's forwards make per time unit
            row: dict[str, Any] = {"schedule": name, "p": p, "m": m,
                                   "plain_makespan": plain.makespan,
                                   "plain_peak_fraction": plain.peak_fraction, "speeds": {}}
            for k in SPEEDS:
                sim = simulate(with_offload(s, link=OffloadLink(k * per_rank)))
                row["speeds"][str(k)] = {
                    "slowdown": sim.makespan / plain.makespan,
                    "peak_fraction": sim.peak_fraction,
                    "host_peak_fraction": max(sim.host_peak) / plain.reference_peak}
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The markdown table docs/memory.md shows."""
    head = " | ".join(f"k = {k:g}" for k in SPEEDS)
    print(f"| schedule | p, m | peak without | {head} |")
    print("|---|---|---|" + "---|" * len(SPEEDS))
    for r in rows:
        cells = " | ".join(f"{c['slowdown']:.2f}x, {c['peak_fraction']:.2f}"
                           for c in r["speeds"].values())
        print(f"| {r['schedule']} | {r['p']}, {r['m']} | {r['plain_peak_fraction']:.2f} | "
              f"{cells} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--emulate-ms", type=float, default=20.0)
    parser.add_argument("--sim-only", action="store_true")
    args = parser.parse_args(argv)
    out = ROOT / "benchmarks" / "results" / "offload.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    rows = old.get("emulated", [])
    if not args.sim_only:
        rows = []
        for name, copy in CASES:
            r = run(name, copy, args.steps, args.emulate_ms)
            rows.append({"schedule": name, "copy_passes": copy,
                         "link_gb_s": ACT_BYTES / (copy * args.emulate_ms / 1e3) / 1e9,
                         "measured_ms": r["step_ms_median"], "simulated_ms": r["simulated_ms"],
                         "ratio": r["measured_over_simulated"]})
        print(f"{'schedule':<8} {'copy':>5} {'measured ms':>12} {'simulated ms':>13} "
              f"{'ratio':>7}")
        for row in rows:
            ok = "ok" if row["ratio"] <= TARGET else "over"
            print(f"{row['schedule']:<8} {row['copy_passes']:>5g} {row['measured_ms']:>12.1f} "
                  f"{row['simulated_ms']:>13.1f} {row['ratio']:>7.3f} {ok}")
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    table = free_table()
    print_table(table)
    doc = {"emulate_ms": args.emulate_ms, "steps": args.steps, "target": TARGET,
           "loadavg": load if not args.sim_only else old.get("loadavg"), "emulated": rows,
           "speeds": list(SPEEDS), "free_table": table}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
