"""The README's main command (`make demo`): train the small GPT with v-half, then with 1F1B.

Both runs use 4 CPU processes (gloo on 127.0.0.1, one thread each), 8 microbatches of 4
sequences and the same weights and data, so the losses agree step by step (a schedule changes
the order of the passes, not the math), while step time and activation memory differ: v-half
keeps floor((p+2)/2)/p of 1F1B's activations in the paper's unit model (3/4 at p=4, half as p
grows; the head's logits on rank 0 weigh a little more here). About a minute on 2 cores.

    python examples/demo.py [--steps 10] [--ranks 4] [--microbatches 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def run(schedule: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "pipeblocks", "train", "--schedule", schedule,
           "--ranks", str(args.ranks), "--microbatches", str(args.microbatches),
           "--steps", str(args.steps), "--seed", str(args.seed), "--memory", "--json"]
    print(f"$ pipeblocks train --schedule {schedule} --ranks {args.ranks} --microbatches "
          f"{args.microbatches} --steps {args.steps} --memory --json", flush=True)
    start = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"demo: {schedule} failed (exit code {res.returncode})")
    report = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"  done in {time.monotonic() - start:.0f} s", flush=True)
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--microbatches", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    reports = {name: run(name, args) for name in ("v-half", "1f1b")}
    names = list(reports)
    print()
    print("step  " + "".join(f"{n + ' loss':>14}{n + ' ms':>12}" for n in names))
    for k in range(args.steps):
        print(f"{k + 1:>4}  " + "".join(
            f"{reports[n]['loss'][k]:>14.4f}{reports[n]['step_ms'][k]:>12.1f}" for n in names))
    print()
    rows = [
        ("final loss", lambda r: f"{r['loss'][-1]:.4f}"),
        ("median step (ms)", lambda r: f"{r['step_ms_median']:.1f}"),
        ("tokens/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
        ("stages (p x v)", lambda r: f"{r['ranks']} x {r['stages_per_rank']}"),
        ("peak activations, worst rank (MiB)",
         lambda r: f"{max(r['peak_activation_bytes']) / 2**20:.2f}"),
        ("peak activations per rank (MiB)",
         lambda r: " ".join(f"{b / 2**20:.2f}" for b in r["peak_activation_bytes"])),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'':<{width}}  " + "".join(f"{n:>24}" for n in names))
    for label, fmt in rows:
        print(f"{label:<{width}}  " + "".join(f"{fmt(reports[n]):>24}" for n in names))
    ratio = max(reports["v-half"]["peak_activation_bytes"]) / max(
        reports["1f1b"]["peak_activation_bytes"])
    same = max(abs(a - b) for a, b in zip(reports["v-half"]["loss"], reports["1f1b"]["loss"],
                                          strict=True))
    print(f"\nv-half holds {ratio:.2f}x of 1F1B's peak activation memory; the losses of the two "
          f"schedules differ by at most {same:.1e} (the same math in another order).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
