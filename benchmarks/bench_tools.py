"""Tool speed: generate, validate, simulate and search time against the number of passes.

    $ .venv/bin/python benchmarks/bench_tools.py            # p=8..128, m=8p (up to 786,432 passes)
    $ .venv/bin/python benchmarks/bench_tools.py --quick    # p=4..16 (a smoke run)

For each generator below, p and m double together (m = 8p, so the number of passes grows 4x
per size) and each size is timed with ``time.perf_counter`` (``bench_sim.timed``: the
generator, ``validate`` and ``simulate`` under unit costs, one after the other; sizes that take
under a second keep the median of three runs). The memory-
limited search (``pipeblocks.search``, when it is importable) is timed on its own sweep at half
of 1F1B's memory, up to the first size predicted (from the growth so far) to pass
``SEARCH_CAP_S`` per call. The growth exponent k of
time = c·passes^k is fitted by least squares on logarithms. Writes
``benchmarks/results/tools.json`` and ``docs/img/bench_tools.png`` (log-log).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import bench_sim  # noqa: E402

NAME = "tools"
GENERATORS = ("1f1b", "zb-h1", "v-half", "v-zb")
SWEEP = [(8, 64), (16, 128), (32, 256), (64, 512), (128, 1024)]
QUICK_SWEEP = [(4, 32), (8, 64), (16, 128)]
SEARCH_SWEEP = [(4, 16), (8, 32), (16, 64), (32, 128), (32, 256), (64, 512), (128, 1024)]
QUICK_SEARCH_SWEEP = [(4, 16), (8, 32)]
SEARCH_CAP_S = 60.0
SEARCH_BUDGET = 0.5
PHASES = ("generate", "validate", "simulate")


def timed(name: str, p: int, m: int) -> dict[str, Any]:
    """``bench_sim.timed``; below a second, the run with the median total of three."""
    first = bench_sim.timed(name, p, m)
    if first["total_s"] > 1.0:
        return first
    runs = sorted([first, *(bench_sim.timed(name, p, m) for _ in range(2))],
                  key=lambda r: r["total_s"])
    return runs[1]


def time_search(fn: Any, p: int, m: int) -> dict[str, Any]:
    """Seconds of one search (every family, as ``pipeblocks search``) at SEARCH_BUDGET x
    1F1B's memory, unit costs."""
    from pipeblocks.sim import UniformCosts

    t0 = time.perf_counter()
    result = fn((p, m), UniformCosts(), SEARCH_BUDGET)
    dt = time.perf_counter() - t0
    return {"p": p, "m": m, "passes": result.schedule.num_actions, "search_s": dt,
            "evaluated": result.evaluated, "found": result.schedule.name}


def run(quick: bool = False) -> dict[str, Any]:
    """Time every phase over the sweep; write the JSON and the plot; return the results."""
    sweep = QUICK_SWEEP if quick else SWEEP
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in GENERATORS:
        rows[name] = []
        bench_sim.timed(name, *sweep[0])  # warm-up: imports and first-call costs
        for p, m in sweep:
            c.log(f"tools: {name} p={p} m={m}")
            rows[name].append(timed(name, p, m))
    fits: dict[str, dict[str, float]] = {}
    for name, rs in rows.items():
        xs = [float(r["passes"]) for r in rs]
        fits[name] = {ph: c.fit_exponent(xs, [r[f"{ph}_s"] for r in rs])[0]
                      for ph in (*PHASES, "total")}

    fn, note = c.search_api()
    search_rows: list[dict[str, Any]] = []
    if fn is not None:
        for p, m in QUICK_SEARCH_SWEEP if quick else SEARCH_SWEEP:
            if len(search_rows) >= 2:
                # predict this size from the growth so far; skip what would pass the cap
                a, b = search_rows[-2], search_rows[-1]
                k = c.fit_exponent([a["p"] * a["m"], b["p"] * b["m"]],
                                   [a["search_s"], b["search_s"]])[0]
                guess = b["search_s"] * (p * m / (b["p"] * b["m"])) ** max(k, 1.0)
                if guess > SEARCH_CAP_S:
                    note = (f"sizes from p={p} m={m} on not timed: about {guess:.0f} s predicted "
                            f"(cap {SEARCH_CAP_S:.0f} s per call)")
                    break
            c.log(f"tools: search p={p} m={m} at {SEARCH_BUDGET} x 1F1B memory")
            try:
                r = time_search(fn, p, m)
            except Exception as e:  # a search that fails is reported, not fatal
                note = f"search failed at p={p} m={m}: {type(e).__name__}: {e}"
                break
            search_rows.append(r)
    if search_rows:
        fits["search"] = {"search": c.fit_exponent([float(r["passes"]) for r in search_rows],
                                                   [r["search_s"] for r in search_rows])[0]}
    result = {"sweep": rows, "exponents": fits, "search": search_rows, "search_note": note,
              "search_budget": SEARCH_BUDGET}
    result["plot"] = str(plot(result, quick).relative_to(c.ROOT))
    c.write_result(NAME, result, quick)
    return result


def plot(result: dict[str, Any], quick: bool) -> Path:
    plt = c.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for name, rs in result["sweep"].items():
        xs = [r["passes"] for r in rs]
        k = result["exponents"][name]["total"]
        ax.loglog(xs, [r["total_s"] for r in rs], "o-", label=f"{name} (k={k:.2f})")
    ax.set_title("generate + validate + simulate")
    ax.set_xlabel("passes in the schedule")
    ax.set_ylabel("seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    ref = result["sweep"].get("v-zb") or next(iter(result["sweep"].values()))
    xs = [r["passes"] for r in ref]
    for ph in PHASES:
        k = result["exponents"]["v-zb" if "v-zb" in result["sweep"] else
                                next(iter(result["sweep"]))][ph]
        ax.loglog(xs, [r[f"{ph}_s"] for r in ref], "o-", label=f"{ph} (k={k:.2f})")
    if result["search"]:
        k = result["exponents"]["search"]["search"]
        ax.loglog([r["passes"] for r in result["search"]], [r["search_s"] for r in result["search"]],
                  "s--", label=f"search at {SEARCH_BUDGET}x 1F1B memory (k={k:.2f})")
    ax.set_title("v-zb by phase" + ("" if result["search"] else " (search not timed)"))
    ax.set_xlabel("passes in the schedule")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Tool speed; fitted time ~ passes^k", fontsize=10)
    fig.tight_layout()
    path = c.image_path(NAME, quick)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: dict[str, Any], md_dir: Path = c.ROOT / "docs") -> str:
    """The docs/benchmarks.md section."""
    lines = [
        "## Tool speed",
        "",
        "How long the pure-Python tools take as schedules grow. p and m double together "
        "(m = 8p); each size is one run of `bench_sim.timed` (generate, `validate`, `simulate` "
        "with unit costs, each timed with `time.perf_counter`; the median of three runs where "
        "one takes under a second), in one process on the machine above, after a warm-up run. k is the fitted exponent of time ~ passes^k (least squares on logarithms; "
        "k = 1 is linear).",
        "",
    ]
    head = ["schedule", "p", "m", "passes", "generate s", "validate s", "simulate s", "total s",
            "µs / pass"]
    rows = []
    for name, rs in result["sweep"].items():
        for r in rs:
            rows.append([name, r["p"], r["m"], r["passes"], r["generate_s"], r["validate_s"],
                         r["simulate_s"], r["total_s"], 1e6 * r["total_s"] / r["passes"]])
    lines += [c.table(head, rows), ""]
    head = ["schedule", *(f"k {ph}" for ph in PHASES), "k total"]
    lines += [c.table(head, [[n, *(f[ph] for ph in (*PHASES, "total"))]
                             for n, f in result["exponents"].items() if n != "search"]), ""]
    if result["search"]:
        lines += [f"Search (`pipeblocks.search.search((p, m), UniformCosts(), "
                  f"{result['search_budget']})`: every family, as `pipeblocks search` does; "
                  f"one call per size, `perf_counter`; *passes* counts the schedule found):", ""]
        lines += [c.table(["p", "m", "passes", "candidates simulated", "search s", "found"],
                          [[r["p"], r["m"], r["passes"], r.get("evaluated"), r["search_s"],
                            f"`{r.get('found', '')}`"] for r in result["search"]]), ""]
        lines += [f"Fitted k of the search: {result['exponents']['search']['search']:.2f}.", ""]
    if result["search_note"]:
        lines += [f"Note: {result['search_note']}.", ""]
    lines += [f"![tool speed]({c.link(result['plot'], md_dir)})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = ap.parse_args(argv)
    result = run(args.quick)
    for name, rs in result["sweep"].items():
        print(f"\n{name}")
        c.print_table(["p", "m", "passes", "generate", "validate", "simulate", "total"],
                      [[r["p"], r["m"], r["passes"], r["generate_s"], r["validate_s"],
                        r["simulate_s"], r["total_s"]] for r in rs])
        print("k: " + ", ".join(f"{k} {v:.2f}" for k, v in result["exponents"][name].items()))
    if result["search"]:
        print("\nsearch")
        c.print_table(["p", "m", "passes", "search s"],
                      [[r["p"], r["m"], r["passes"], r["search_s"]] for r in result["search"]])
    if result["search_note"]:
        print(f"note: {result['search_note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
