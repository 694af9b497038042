"""Where a pipeline step's time went: summaries of the executor's per-pass trace.

Used by ``bench_fidelity``: every rank records ``(action, begin, ready, end)`` per pass
(``Executor(record=True)``) and the number of transfers its lowered program posts between two
passes; rank 0 turns them into the medians and totals the report shows, and the per-stage pass
times of a real run into a costs object the simulator reads.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

__all__ = ["posts_between", "trace_summary", "line", "inrun_costs"]


def posts_between(program: Any) -> list[int]:
    """Transfers posted between each two consecutive passes of a rank's lowered program."""
    from pipeblocks.ir.lowering import Comm

    counts: list[int] = []
    n, started = 0, False
    for op in program:
        if isinstance(op, Comm):
            n += 1
            continue
        if started:
            counts.append(n)
        started, n = True, 0
    return counts


def trace_summary(traces: list[Any], case: dict[str, Any]) -> dict[str, Any]:
    """Where the last step's time went, from every rank's executor trace (ms).

    ``pass``: medians per (stage, kind) of ``end - ready`` (the pass itself, its input there);
    ``overrun``: median of the pass minus its emulated length; ``gap``: median time between
    one pass's end and the next one's begin (posting transfers, bookkeeping); ``gap_total``:
    the largest sum of gaps over the ranks; ``wait_total``: the same for the time a pass
    waited for its input; ``cpu_ms``: the CPU time all ranks used in the step (every thread). ``gap_fixed`` + ``gap_per_post`` · n is the least-squares line of a
    gap against the n transfers posted in it (the executor posts them just before the pass).
    """
    per: dict[str, list[float]] = {}
    over, gaps, gap_tot, wait_tot, posts = [], [], [], [], []
    cpu = 0.0
    for tr, between, cpu_ms in traces:
        cpu += cpu_ms
        tr = list(tr)
        posts += between
        for action, _begin, ready, end in tr:
            stage, kind = re.fullmatch(r"(\d+)([A-Z]+)\d+", action).groups()  # type: ignore[union-attr]
            per.setdefault(f"{stage}{kind}", []).append((end - ready) * 1e3)
            if case["kind"] == "emulated":
                over.append((end - ready) * 1e3 - case["ms"] * (2 if kind == "BW" else 1))
        g = [(tr[i + 1][1] - tr[i][3]) * 1e3 for i in range(len(tr) - 1)]
        gaps += g
        gap_tot.append(sum(g))
        wait_tot.append(sum((ready - begin) * 1e3 for _, begin, ready, _ in tr))
    fixed, per_post = line(posts, gaps)
    return {"pass": {k: statistics.median(v) for k, v in per.items()},
            "gap_fixed": fixed, "gap_per_post": per_post, "cpu_ms": cpu,
            "overrun": statistics.median(over) if over else None,
            "gap": statistics.median(gaps) if gaps else None,
            "gap_total": max(gap_tot, default=0.0), "wait_total": max(wait_tot, default=0.0)}


def line(xs: list[int], ys: list[float]) -> tuple[float | None, float | None]:
    """Intercept and slope of the least-squares line y = a + b·x (None if x never varies)."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        return None, None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return my - b * mx, b


def inrun_costs(row: dict[str, Any], S: int) -> dict[str, Any]:
    """Per-stage costs from the pass times the executor recorded in the run (real compute).

    A schedule that runs BW only gives B + W together; it is split in half (the simulator
    only ever adds them up for BW).
    """
    got = row["trace"]["pass"]
    stages = []
    for s in range(S):
        if f"{s}B" in got:
            b, w = got[f"{s}B"], got[f"{s}W"]
        else:
            b = w = got[f"{s}BW"] / 2
        stages.append({"f": got[f"{s}F"], "b": b, "w": w})
    return {"stages": stages}
