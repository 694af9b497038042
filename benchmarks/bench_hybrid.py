"""Hybrid parallelism, emulated: measured / simulated step for (dp 2, pp 2), DDP and FSDP2.

    $ .venv/bin/python benchmarks/bench_hybrid.py            # 1f1b and v-half, 8 steps each
    $ .venv/bin/python benchmarks/bench_hybrid.py --steps 3  # a smoke run

Each run is ``pipeblocks train --ranks 4 --dp 2 --dp-mode MODE --emulate-ms 20``: every pass
sleeps 20 ms and every collective sleeps what the ring cost model gives for its bytes over
links of ``--bandwidth`` bytes/s (sim/collectives.py). DDP: each stage's gradient all-reduce,
predicted by sim/hybrid.py. FSDP2 (runtime/emulate_fsdp.py): the unshard all-gathers (the
next pass waits), the blocking re-gather of a resharded stage before a pass, the fused backward
in B and the reduce-scatters, predicted by sim/fsdp.py. Target: measured / simulated <= 1.05.
Prints a table and writes benchmarks/results/hybrid.json with the load average.
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
CASES = (("1f1b", 4), ("v-half", 4))  # (schedule, microbatches) on dp 2 x pp 2
MODES = ("ddp", "fsdp")
TARGET = 1.05


def run(name: str, m: int, steps: int, bandwidth: float, ms: float, mode: str = "ddp"
        ) -> dict[str, Any]:
    """One emulated run's JSON report."""
    cmd = [sys.executable, "-m", "pipeblocks", "train", "--schedule", name, "--ranks", "4",
           "--dp", "2", "--dp-mode", mode, "--microbatches", str(m), "--steps", str(steps), "--emulate-ms",
           str(ms), "--emulate-bandwidth", str(bandwidth), "--json"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if res.returncode:
        raise SystemExit(f"{name}: {res.stderr.strip()[-500:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--emulate-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth", type=float, default=2e7,
                        help="bytes/s of the emulated reduction links (default 2e7)")
    args = parser.parse_args(argv)
    rows = []
    for mode in MODES:
        for name, m in CASES:
            r = run(name, m, args.steps, args.bandwidth, args.emulate_ms, mode)
            rows.append({"schedule": name, "dp_mode": mode, "dp": 2, "pp": 2, "microbatches": m,
                         "measured_ms": r["step_ms_median"], "simulated_ms": r["simulated_ms"],
                         "ratio": r["measured_over_simulated"], "comm_ms": r["comm_ms"]})
    load = os.getloadavg()
    print(f"{'schedule':<8} {'mode':<5} {'m':>3} {'measured ms':>12} {'simulated ms':>13} "
          f"{'ratio':>7}")
    for row in rows:
        ok = "ok" if row["ratio"] <= TARGET else "over"
        print(f"{row['schedule']:<8} {row['dp_mode']:<5} {row['microbatches']:>3} "
              f"{row['measured_ms']:>12.1f} "
              f"{row['simulated_ms']:>13.1f} {row['ratio']:>7.3f} {ok}")
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    out = ROOT / "benchmarks" / "results" / "hybrid.json"
    out.write_text(json.dumps({"emulate_ms": args.emulate_ms, "bandwidth": args.bandwidth,
                               "steps": args.steps, "target": TARGET, "loadavg": load,
                               "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
