"""Make the planner's tables in docs/planner.md from runs of the planner: "Predicted against
published" (benchmarks/bench_planner.py's three comparisons) and the 40-GPU example's best plan
of each schedule family.

    $ .venv/bin/python docs/make_planner_table.py            # rewrite the page (about 3 min)
    $ .venv/bin/python docs/make_planner_table.py --print    # print the blocks only

Each table sits between ``<!-- planner-NAME: begin -->`` and ``<!-- planner-NAME: end -->``;
tests/planner/test_planner_table.py recomputes the first rows and checks the page shows them.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pipeblocks as pb
from pipeblocks.planner import Cluster

ROOT = Path(__file__).resolve().parents[1]
PAGE = Path(__file__).with_name("planner.md")
BIG = "layers=78,hidden=10240,heads=80,seq=1024,vocab=51200"


def bench() -> ModuleType:
    """benchmarks/bench_planner.py, where the published figures and the runs live."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_planner",
                                                  ROOT / "benchmarks" / "bench_planner.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _mean_abs(rows: list[list[Any]], col: int) -> tuple[float, float]:
    errs = [abs(float(r[col])) for r in rows]
    return sum(errs) / len(errs), max(errs)


def korthikanti(mod: ModuleType, count: int | None = None) -> str:
    rows = mod.korthikanti(count)
    body = [[r[0], r[1], f"{r[2]}%", f"{r[3]}%", f"{r[4]:+.1f}%"] for r in rows]
    text = _table(["model (Korthikanti)", "layout", "published MFU", "predicted MFU",
                   "error"], body)
    if count is None:
        mean, worst = _mean_abs(rows, 4)
        text += f"\n\nMean |error| {mean:.1f}%, largest {worst:.1f}%."
    return text


def narayanan(mod: ModuleType, count: int | None = None) -> str:
    rows = mod.narayanan(count)
    body = [[r[0], r[1], r[2], r[3], f"{r[4]:+.1f}%"] for r in rows]
    text = _table(["model (Narayanan)", "layout", "published TFLOP/s/GPU", "predicted",
                   "error"], body)
    if count is None:
        mean, worst = _mean_abs(rows, 4)
        text += f"\n\nMean |error| {mean:.1f}%, largest {worst:.1f}%."
    return text


def zero_bubble(mod: ModuleType, count: int | None = None) -> str:
    rows = mod.zero_bubble(count)
    body = [[r[0], r[1], f"{r[2]}%", f"{r[3]}%"] for r in rows]
    text = _table(["model (settings unverified)", "setting", "zb-h1 gain", "zb-h2 gain"], body)
    if count is None:
        h1, h2 = max(r[2] for r in rows), max(r[3] for r in rows)
        text += (f"\n\nLargest predicted gains: zb-h1 {h1}% (published, for the searched "
                 f"ZB-1p: up to 23%; error {100 * (h1 - 23) / 23:+.0f}% relative), zb-h2 "
                 f"{h2}% (published ZB-2p: up to 31%; error {100 * (h2 - 31) / 31:+.0f}% "
                 f"relative).")
    return text


def forty_gpus() -> str:
    """The best plan of each family for the issue's 40-GPU command."""
    r = pb.plan(BIG, cluster=Cluster(gpus=40, gpus_per_node=8, gpu_memory=80e9, flops=312e12),
                global_batch=160)
    body = []
    for p in r.best_per_schedule().values():
        body.append([p.schedule, p.dp, p.tp, p.pp, p.microbatch_size,
                     "full" if p.recompute else "off", p.sharding,
                     f"{p.peak_memory_bytes / 1e9:.1f}", "yes" if p.fits else "no",
                     f"{p.samples_per_s:.2f}", f"{100 * p.mfu:.1f}%"])
    best = {p.schedule: p for p in r.best_per_schedule().values() if p.fits}
    one = best.get("1f1b")
    v = max((best[n] for n in ("zb-v", "v-zb", "v-half", "v-min") if n in best),
            key=lambda p: p.samples_per_s, default=None)
    text = _table(["schedule", "dp", "tp", "pp", "mbs", "recompute", "sharding", "GB/GPU",
                   "fits", "samples/s", "MFU"], body)
    if one is not None and v is not None:
        text += (f"\n\n{len(r.plans)} plans. The best V schedule ({v.schedule}) is "
                 f"{100 * (v.samples_per_s / one.samples_per_s - 1):.1f}% faster than the "
                 f"best 1F1B plan.")
    return text


BLOCKS = {"korthikanti": korthikanti, "narayanan": narayanan, "zero-bubble": zero_bubble}


def blocks() -> dict[str, str]:
    mod = bench()
    out = {name: make(mod) for name, make in BLOCKS.items()}
    out["forty-gpus"] = forty_gpus()
    return out


def rewrite(page: str, made: dict[str, str]) -> str:
    for name, text in made.items():
        begin, end = f"<!-- planner-{name}: begin -->", f"<!-- planner-{name}: end -->"
        pattern = re.escape(begin) + r"\n.*?" + re.escape(end)
        if not re.search(pattern, page, re.S):
            raise SystemExit(f"{PAGE} has no block {begin} ... {end}")
        block = f"{begin}\n{text}\n{end}"
        page = re.sub(pattern, lambda _m, b=block: b, page, flags=re.S)
    return page


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--print", action="store_true", help="print the blocks, leave the page")
    args = p.parse_args()
    made = blocks()
    if args.print:
        for name, text in made.items():
            print(f"## {name}\n{text}\n")
        return
    PAGE.write_text(rewrite(PAGE.read_text(), made))
    print(f"rewrote {len(made)} tables in {PAGE}")


if __name__ == "__main__":
    main()
