"""Tensor parallel per stage: exactness and step time of the (tp, pp) meshes (issue 17).

    $ .venv/bin/python benchmarks/bench_tp.py            # 5 steps per mesh
    $ .venv/bin/python benchmarks/bench_tp.py --steps 3  # a smoke run

Each run is ``pipeblocks train --check-grads --json`` on the small GPT (dim 64, 4 heads, 8
blocks) with zb-h1 on 2 pipeline ranks: tp 1 (2 ranks), tp 2 (4 ranks), and dp 2 x tp 2 with
FSDP2 (8 ranks). It records the step-1 gradient and loss differences from the unpartitioned
model (target <= 1e-5) and the median step. On CPU gloo with tiny layers tensor parallel is
slower (its all-reduces cost more than the halved matmuls): the figure is the overhead, not a
speed-up. Prints a table and writes benchmarks/results/tp.json with the load average.
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
CASES = ((1, 1, "ddp"), (1, 2, "ddp"), (2, 2, "fsdp"))  # (dp, tp, dp mode), pp 2
TARGET = 1e-5


def run(dp: int, tp: int, mode: str, steps: int) -> dict[str, Any]:
    """One run's JSON report."""
    cmd = [sys.executable, "-m", "pipeblocks", "train", "--schedule", "zb-h1", "--ranks",
           str(2 * dp * tp), "--dp", str(dp), "--tp", str(tp), "--dp-mode", mode,
           "--microbatches", "4", "--microbatch-size", "2", "--steps", str(steps),
           "--check-grads", "--json", "--timeout", "300"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if res.returncode:
        raise SystemExit(f"dp {dp} tp {tp}: {res.stderr.strip()[-500:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for dp, tp, mode in CASES:
        r = run(dp, tp, mode, args.steps)
        rows.append({"dp": dp, "tp": tp, "pp": r["pp"], "dp_mode": mode, "ranks": r["ranks"],
                     "grad_max_abs_diff": r["grad_max_abs_diff"],
                     "loss_abs_diff": r["loss_abs_diff"], "step_ms_median": r["step_ms_median"],
                     "loss": r["loss"]})
    load = os.getloadavg()
    print(f"{'dp':>3} {'tp':>3} {'pp':>3} {'mode':>5} {'grad diff':>10} {'loss diff':>10} "
          f"{'step ms':>9}")
    for row in rows:
        ok = "ok" if max(row["grad_max_abs_diff"], row["loss_abs_diff"]) <= TARGET else "over"
        print(f"{row['dp']:>3} {row['tp']:>3} {row['pp']:>3} {row['dp_mode']:>5} "
              f"{row['grad_max_abs_diff']:>10.2e} {row['loss_abs_diff']:>10.2e} "
              f"{row['step_ms_median']:>9.1f} {ok}")
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    out = ROOT / "benchmarks" / "results" / "tp.json"
    out.write_text(json.dumps({"steps": args.steps, "target": TARGET, "loadavg": load,
                               "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
