"""The planner's predictions against published measurements (docs/planner.md).

    $ .venv/bin/python benchmarks/bench_planner.py            # predicted against published
    $ .venv/bin/python benchmarks/bench_planner.py --timing   # the issue's commands, timed

Three sets, each run through :func:`pipeblocks.planner.grid.evaluate` restricted to the
published layout (so only the time model is compared, not the search). The published figures
were checked with the search tool against text copies of the sources (docs/planner.md says
which, and what could not be checked):

- Korthikanti et al. 2022 (*Reducing Activation Recomputation in Large Transformer Models*,
  arXiv 2205.05198): Table 3 (the layouts) and Table 5 (MFU) of the 22B, 175B, 530B and 1T GPT
  models on A100s with sequence parallelism and selective recompute (predicted here without
  recompute: selective recompute adds ~1-2% of time, the paper's HFU - MFU; with 1F1B and
  microbatch 1, where Table 3 has microbatch 4 for 22B and the text an interleaved schedule
  with 3 chunks for 175B and 530B);
- Narayanan et al. 2021 (*Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM*, arXiv 2104.04473), Table 1: achieved TFLOP/s per GPU of 1.7B..1T GPT models
  with full recompute; the paper counts the recomputed forward in its FLOPs
  (96 B s l h^2 (1 + s/6h + V/16lh)), so the prediction is that count over the predicted step;
- Qi et al. 2024 (*Zero Bubble Pipeline Parallelism*, arXiv 2401.10241): the abstract's largest
  throughput gains over 1F1B, 23% at 1F1B's memory and 31% with relaxed memory, against the
  largest predicted gains of zb-h1 and zb-h2 over 1f1b on four models and three microbatch
  counts each (the model settings below are as recalled; they could not be checked here).

docs/make_planner_table.py puts these tables into docs/planner.md.

Writes ``benchmarks/results/planner.json``; ``--timing`` runs the issue's 40-GPU command and the
64-GPU GPT-3 grid (with and without the search) ``--reps`` times each as a user would (a fresh
``pipeblocks plan`` process, ``--json``) and writes ``benchmarks/results/planner_timing.json``
with the load average, so a figure from a busy machine says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

from pipeblocks.planner import Cluster, ModelSpec, Space  # noqa: E402
from pipeblocks.planner.grid import evaluate  # noqa: E402

NAME = "planner"
A100 = 312e12

# (name, heads, hidden, layers, tp, pp, gpus, global batch, published MFU %)
KORTHIKANTI = [
    ("22B", 64, 6144, 48, 8, 1, 8, 4, 41.5),
    ("175B", 96, 12288, 96, 8, 8, 64, 64, 51.4),
    ("530B", 128, 20480, 105, 8, 35, 280, 280, 56.0),
    ("1T", 160, 25600, 128, 8, 64, 512, 512, 56.3),
]
# (name, heads, hidden, layers, tp, pp, gpus, global batch, published TFLOP/s per GPU)
NARAYANAN = [
    ("1.7B", 24, 2304, 24, 1, 1, 32, 512, 137),
    ("3.6B", 32, 3072, 30, 2, 1, 64, 512, 138),
    ("7.5B", 32, 4096, 36, 4, 1, 128, 512, 142),
    ("18.4B", 48, 6144, 40, 8, 1, 256, 1024, 135),
    ("39.1B", 64, 8192, 48, 8, 2, 512, 1536, 138),
    ("76.1B", 80, 10240, 60, 8, 4, 1024, 1792, 140),
    ("145.6B", 96, 12288, 80, 8, 8, 1536, 2304, 148),
    ("310.1B", 128, 16384, 96, 8, 16, 1920, 2160, 155),
    ("529.6B", 128, 20480, 105, 8, 35, 2520, 2520, 163),
    ("1008B", 160, 25600, 128, 8, 64, 3072, 3072, 163),
]
# (name, heads, hidden, layers, pp, microbatch counts); seq 1024, one GPU per stage
ZERO_BUBBLE = [
    ("1.5B", 24, 2304, 22, 8, (24, 32, 64)),
    ("6.2B", 32, 4096, 30, 8, (24, 32, 64)),
    ("14.6B", 40, 5120, 46, 16, (48, 64, 128)),
    ("28.3B", 48, 6144, 62, 32, (96, 128, 256)),
]


def _one(model: ModelSpec, gpus: int, tp: int, pp: int, batch: int, schedule: str,
         recompute: bool) -> Any:
    space = Space(schedules=(schedule,), tp=(tp,), pp=(pp,), microbatch_sizes=(1,),
                  recompute=(recompute,), sharding=("none",))
    return evaluate(model, Cluster(gpus=gpus, reserved=0.0), batch, space)[0]


def korthikanti(count: int | None = None) -> list[list[Any]]:
    """The comparison's rows (the first ``count`` cases; None: all)."""
    rows = []
    for name, a, h, layers, tp, pp, gpus, batch, mfu in KORTHIKANTI[:count]:
        m = ModelSpec(layers=layers, hidden=h, heads=a, seq=2048, vocab=51200)
        p = _one(m, gpus, tp, pp, batch, "1f1b", False)
        rows.append([name, f"t{tp} p{pp} n{gpus} B{batch}", mfu, round(100 * p.mfu, 1),
                     round(100 * (p.mfu * 100 - mfu) / mfu, 1)])
    return rows


def narayanan(count: int | None = None) -> list[list[Any]]:
    """The comparison's rows (the first ``count`` cases; None: all)."""
    rows = []
    for name, a, h, layers, tp, pp, gpus, batch, tflops in NARAYANAN[:count]:
        m = ModelSpec(layers=layers, hidden=h, heads=a, seq=2048, vocab=51200)
        p = _one(m, gpus, tp, pp, batch, "1f1b", True)
        s, v = 2048, 51200
        counted = 96 * batch * s * layers * h * h * (1 + s / (6 * h) + v / (16 * layers * h))
        got = counted / p.step_time_s / gpus / 1e12
        rows.append([name, f"t{tp} p{pp} n{gpus} B{batch}", tflops, round(got),
                     round(100 * (got - tflops) / tflops, 1)])
    return rows


def zero_bubble(count: int | None = None) -> list[list[Any]]:
    """The comparison's rows (the first ``count`` cases; None: all)."""
    rows = []
    for name, a, h, layers, pp, counts in ZERO_BUBBLE[:count]:
        m = ModelSpec(layers=layers, hidden=h, heads=a, seq=1024, vocab=51200)
        for mb in counts:
            speed = {s: _one(m, pp, 1, pp, mb, s, False).samples_per_s
                     for s in ("1f1b", "zb-h1", "zb-h2")}
            rows.append([name, f"p{pp} m{mb}", round(100 * (speed["zb-h1"] / speed["1f1b"] - 1), 1),
                         round(100 * (speed["zb-h2"] / speed["1f1b"] - 1), 1)])
    return rows


# (name, model, gpus, global batch, extra options): the acceptance command and a
# 64-GPU grid (4.3 in the issue: "a full grid for 64 GPUs in under 60 s")
TIMED = [
    ("40 GPUs (issue)", "layers=78,hidden=10240,heads=80,seq=1024,vocab=51200", 40, 160, []),
    ("64 GPUs GPT-3", "layers=96,hidden=12288,heads=96,seq=2048,vocab=51200", 64, 512, []),
    ("64 GPUs GPT-3, no search", "layers=96,hidden=12288,heads=96,seq=2048,vocab=51200", 64,
     512, ["--search-budgets", "0"]),
]


def timing(reps: int) -> None:
    rows, out = [], []
    exe = str(Path(sys.executable).parent / "pipeblocks")
    for name, model, gpus, batch, extra in TIMED:
        argv = [exe, "plan", "--model", model, "--gpus", str(gpus), "--gpus-per-node", "8",
                "--gpu-memory", "80GB", "--flops", "312e12", "--global-batch", str(batch),
                "--json", "--quiet", *extra]
        load, took, plans, families = c.load_average(), [], 0, 0
        for _ in range(reps):
            t0 = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, check=True)
            took.append(time.perf_counter() - t0)
            doc = json.loads(done.stdout)
            plans, families = doc["evaluated"], len(doc["best_per_schedule"])
        rows.append([name, plans, families, round(statistics.median(took), 1),
                     round(max(took), 1), round(load, 2)])
        out.append({"name": name, "argv": argv[1:], "seconds": took, "plans": plans,
                    "families": families, "load_average_before": load})
    c.print_table(["command", "plans", "families", "median s", "max s", "load avg"], rows)
    c.write_result("planner_timing", {"runs": out}, False)


def main() -> None:
    p = argparse.ArgumentParser(description="The planner against published figures.")
    p.add_argument("--timing", action="store_true", help="time the issue's commands instead")
    p.add_argument("--reps", type=int, default=3, help="runs of each timed command (default 3)")
    args = p.parse_args()
    if args.timing:
        timing(args.reps)
        return
    c.log("Korthikanti et al. 2022: MFU")
    k = korthikanti()
    c.print_table(["model", "layout", "published MFU %", "predicted MFU %", "error %"], k)
    print(f"mean |error| {sum(abs(r[4]) for r in k) / len(k):.1f}% (these four set the curve)")
    c.log("Narayanan et al. 2021: TFLOP/s per GPU")
    n = narayanan()
    c.print_table(["model", "layout", "published", "predicted", "error %"], n)
    print(f"mean |error| {sum(abs(r[4]) for r in n) / len(n):.1f}%, largest "
          f"{max(abs(r[4]) for r in n):.1f}% (held out)")
    c.log("Qi et al. 2024: gains over 1F1B")
    z = zero_bubble()
    c.print_table(["model", "setting", "zb-h1 gain %", "zb-h2 gain %"], z)
    print(f"largest predicted gains: zb-h1 {max(r[2] for r in z)}% (published ZB-1p: up to "
          f"23%), zb-h2 {max(r[3] for r in z)}% (published ZB-2p: up to 31%)")
    c.write_result(NAME, {"korthikanti": k, "narayanan": n, "zero_bubble": z}, False)


if __name__ == "__main__":
    main()
