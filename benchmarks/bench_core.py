"""Core speed: every registered generator generates and validates at p=64, m=512 (issue 3).

    $ .venv/bin/python benchmarks/bench_core.py            # p=64 m=512, median of 3 runs
    $ .venv/bin/python benchmarks/bench_core.py --quick    # p=8 m=64 (a smoke run)

Each generator runs at its default stages per rank (v=2 for the V-shape ones). Prints a table
and writes benchmarks/results/core.json. The target is generate + validate under 2 s each; the
time of a CSV and a JSON round trip (write + read) is shown beside it for reference. A
generator that rejects the size (SpecError) is listed with its message, not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, names
from pipeblocks.ir import validate
from pipeblocks.ir.formats import json_io, torch_csv

SIZE = (64, 512)
QUICK_SIZE = (8, 64)
TARGET_S = 2.0


def timed(name: str, p: int, m: int) -> dict[str, Any]:
    """Seconds to generate and validate one schedule, and to round-trip it through files."""
    t0 = time.perf_counter()
    schedule = generate(name, p, m)
    t1 = time.perf_counter()
    validate(schedule)
    t2 = time.perf_counter()
    csv_back = torch_csv.loads(torch_csv.dumps(schedule), placement=schedule.spec.placement)
    t3 = time.perf_counter()
    json_back = json_io.loads(json_io.dumps(schedule))
    t4 = time.perf_counter()
    assert csv_back == schedule and json_back == schedule, f"{name}: round trip differs"
    return {"passes": schedule.num_actions, "stages_per_rank": schedule.spec.stages_per_rank,
            "generate_s": t1 - t0, "validate_s": t2 - t1, "total_s": t2 - t0,
            "csv_round_trip_s": t3 - t2, "json_round_trip_s": t4 - t3}


def median_run(name: str, p: int, m: int, repeats: int) -> dict[str, Any]:
    """The run with the median total of ``repeats`` runs, plus every run's total."""
    runs = [timed(name, p, m) for _ in range(repeats)]
    best = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
    return {**best, "totals_s": [r["total_s"] for r in runs],
            "median_total_s": statistics.median(r["total_s"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="p=8 m=64: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per generator (median)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "core.json"),
                        help="where to write the JSON results")
    args = parser.parse_args(argv)
    p, m = QUICK_SIZE if args.quick else SIZE
    repeats = max(1, args.repeats)

    print(f"generate + validate at p={p} m={m}, median of {repeats} runs "
          f"(target < {TARGET_S} s each)")
    print(f"{'generator':<18} {'v':>2} {'passes':>8} {'generate':>9} {'validate':>9} "
          f"{'total':>7} {'target':>7} {'csv rt':>7} {'json rt':>8}")
    results: dict[str, dict[str, Any]] = {}
    for name in names():
        try:
            r = median_run(name, p, m, repeats)
        except SpecError as e:
            results[name] = {"skipped": str(e)}
            print(f"{name:<18} skipped: {e}")
            continue
        r["met"] = r["median_total_s"] < TARGET_S
        results[name] = r
        print(f"{name:<18} {r['stages_per_rank']:>2} {r['passes']:>8} {r['generate_s']:>9.3f} "
              f"{r['validate_s']:>9.3f} {r['median_total_s']:>7.3f} "
              f"{'met' if r['met'] else 'MISSED':>7} {r['csv_round_trip_s']:>7.3f} "
              f"{r['json_round_trip_s']:>8.3f}")
    timed_ = [r for r in results.values() if "met" in r]
    all_met = bool(timed_) and all(r["met"] for r in timed_)
    print(f"all generators under {TARGET_S} s: {'yes' if all_met else 'NO'}")

    out = {
        "p": p, "m": m, "target_s": TARGET_S, "repeats": repeats, "all_met": all_met,
        "generators": results, "python": sys.version.split()[0],
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "quick": args.quick,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
