"""The planner's predictions against published measurements (docs/planner.md).

    $ .venv/bin/python benchmarks/bench_planner.py

Three sets, each run through :func:`pipeblocks.planner.grid.evaluate` restricted to the
published layout (so only the time model is compared, not the search):

- Korthikanti et al. 2022 (*Reducing Activation Recomputation in Large Transformer Models*),
  the end-to-end table: MFU of 22B, 175B, 530B and 1T GPT models on A100s with sequence
  parallelism and selective recompute (predicted here without recompute: selective recompute
  adds ~1-2% of time, the paper's HFU - MFU);
- Narayanan et al. 2021 (*Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM*), Table 1: achieved TFLOP/s per GPU of 1.7B..1T GPT models with full recompute;
  the paper counts the recomputed forward in its FLOPs (96 B s l h^2 (1 + s/6h + V/16lh)), so
  the prediction is that count over the predicted step time;
- Qi et al. 2024 (*Zero Bubble Pipeline Parallelism*): the abstract's largest throughput gains
  over 1F1B, 23% at 1F1B's memory and 31% with relaxed memory, against the largest predicted
  gains of zb-h1 and zb-h2 over 1f1b on the paper's four models and three microbatch counts.

Writes ``benchmarks/results/planner.json``.
"""

from __future__ import annotations

import sys
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


def korthikanti() -> list[list[Any]]:
    rows = []
    for name, a, h, layers, tp, pp, gpus, batch, mfu in KORTHIKANTI:
        m = ModelSpec(layers=layers, hidden=h, heads=a, seq=2048, vocab=51200)
        p = _one(m, gpus, tp, pp, batch, "1f1b", False)
        rows.append([name, f"t{tp} p{pp} n{gpus} B{batch}", mfu, round(100 * p.mfu, 1),
                     round(100 * (p.mfu * 100 - mfu) / mfu, 1)])
    return rows


def narayanan() -> list[list[Any]]:
    rows = []
    for name, a, h, layers, tp, pp, gpus, batch, tflops in NARAYANAN:
        m = ModelSpec(layers=layers, hidden=h, heads=a, seq=2048, vocab=51200)
        p = _one(m, gpus, tp, pp, batch, "1f1b", True)
        s, v = 2048, 51200
        counted = 96 * batch * s * layers * h * h * (1 + s / (6 * h) + v / (16 * layers * h))
        got = counted / p.step_time_s / gpus / 1e12
        rows.append([name, f"t{tp} p{pp} n{gpus} B{batch}", tflops, round(got),
                     round(100 * (got - tflops) / tflops, 1)])
    return rows


def zero_bubble() -> list[list[Any]]:
    rows = []
    for name, a, h, layers, pp, counts in ZERO_BUBBLE:
        m = ModelSpec(layers=layers, hidden=h, heads=a, seq=1024, vocab=51200)
        for mb in counts:
            speed = {s: _one(m, pp, 1, pp, mb, s, False).samples_per_s
                     for s in ("1f1b", "zb-h1", "zb-h2")}
            rows.append([name, f"p{pp} m{mb}", round(100 * (speed["zb-h1"] / speed["1f1b"] - 1), 1),
                         round(100 * (speed["zb-h2"] / speed["1f1b"] - 1), 1)])
    return rows


def main() -> None:
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
