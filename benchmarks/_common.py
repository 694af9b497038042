"""Shared helpers of the benchmark scripts: machine facts, progress lines, statistics, output.

Every ``bench_*.py`` module here imports this one (``benchmarks/`` is put on ``sys.path`` by
the module itself, so each runs alone as ``python benchmarks/bench_x.py`` and is importable by
``benchmarks/run.py``). Progress goes to stderr, tables to stdout, results to
``benchmarks/results/<name>.json`` and pictures to ``docs/img/bench_<name>.png``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
IMG = ROOT / "docs" / "img"
PYTHON = sys.executable

_T0 = time.monotonic()


def log(msg: str) -> None:
    """One progress line on stderr, with the seconds since this process started."""
    print(f"[{time.monotonic() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what ``platform`` says elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What a figure was measured on: cores, CPU, OS, load, date and versions."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "torch": _version("torch"),
        "pipeblocks": _version("pipeblocks"),
        "matplotlib": _version("matplotlib"),
    }


def load_average() -> float:
    """The 1-minute load average (runnable processes; this machine has ``cores`` cores)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return math.nan


def spread(xs: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the relative spread (max - min) / median of a sample."""
    if not xs:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "rel_spread": math.nan,
                "n": 0}
    med = statistics.median(xs)
    return {"median": med, "min": min(xs), "max": max(xs),
            "rel_spread": (max(xs) - min(xs)) / med if med else math.nan, "n": len(xs)}


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(k, c) of y = c·x^k by least squares on logarithms; k near 1 means linear."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-9)) for y in ys]
    if len(lx) < 2:
        return math.nan, math.nan
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    if not den:
        return math.nan, math.nan
    k = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den
    return k, math.exp(my - k * mx)


def search_api(name: str = "search") -> tuple[Any, str]:
    """``pipeblocks.search.search`` (or ``pareto``, from ``pipeblocks.search.pareto``), or
    None and a note saying why not: the figures that need the search say so instead of
    failing in a checkout without it."""
    module = "pipeblocks.search.pareto" if name == "pareto" else "pipeblocks.search"
    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the checkout
        return None, f"{module} does not import ({e})"
    fn = getattr(mod, name, None)
    if fn is None:
        return None, f"{module} has no {name}() in this checkout"
    return fn, ""


def timed_step(fn: Any, *args: Any) -> tuple[float, float | None]:
    """Run ``fn(*args)`` on every rank: the pipeline's makespan in ms and the loss (or None).

    A barrier first; then every rank reads ``perf_counter`` (one clock per host) around its
    call, and the makespan is the latest end minus the earliest start. ``fn`` returns the
    loss on the rank that has it, else None. Needs torch.distributed initialised.
    """
    import torch
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    loss = fn(*args)
    t1 = time.perf_counter()
    t = torch.tensor([-t0, t1, loss if loss is not None else -math.inf], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return (float(t[0]) + float(t[1])) * 1e3, (float(t[2]) if math.isfinite(t[2]) else None)


def ping_ms(shape: Sequence[int], reps: int = 25) -> float:
    """One-way time (ms) of a float32 tensor of ``shape`` from rank 0 to rank 1 (median):
    :func:`pipeblocks.runtime.p2p.one_way_ms`."""
    from pipeblocks.runtime.p2p import one_way_ms

    return one_way_ms(shape, reps)


def out_dir(quick: bool) -> Path:
    """Where a smoke run (``--quick``) writes everything: apart from the committed results."""
    return RESULTS / "quick" if quick else RESULTS


def post_cost_us(n: int = 200) -> tuple[float, float]:
    """Wall and CPU µs to post one gloo isend (rank 0) or irecv (rank 1) of an activation.

    Rank 0 posts ``n`` sends while rank 1 posts the ``n`` matching receives; each measures
    its own loop (``perf_counter`` and ``thread_time``), then waits for the transfers. The
    other ranks wait at the barrier. Every rank gets rank 0's and rank 1's mean, averaged.
    """
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    out = torch.zeros(2, dtype=torch.float64)
    dist.barrier()
    if rank in (0, 1):
        bufs = [torch.zeros(4, 32, 64) for _ in range(n)]
        works = []
        w0, c0 = time.perf_counter(), time.thread_time()
        for i, b in enumerate(bufs):
            works.append(dist.isend(b, 1, tag=10_000 + i) if rank == 0 else
                         dist.irecv(b, 0, tag=10_000 + i))
        out[0] = (time.perf_counter() - w0) / n * 1e6
        out[1] = (time.thread_time() - c0) / n * 1e6
        for w in works:
            w.wait()
    dist.all_reduce(out)
    dist.barrier()
    return float(out[0]) / 2, float(out[1]) / 2


def write_result(name: str, payload: dict[str, Any], quick: bool) -> Path:
    """Write ``benchmarks/results/<name>.json`` (``results/quick/`` for a smoke run)."""
    path = out_dir(quick) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "quick": quick, "machine": machine(), **payload}
    path.write_text(json.dumps(body, indent=2, default=_json_default) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def image_path(name: str, quick: bool) -> Path:
    """``docs/img/bench_<name>.png`` (``benchmarks/results/quick/`` for a smoke run)."""
    folder = out_dir(quick) if quick else IMG
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"bench_{name}.png"


def link(plot: str, md_dir: Path) -> str:
    """A plot's path (relative to the repository) as seen from a Markdown file in ``md_dir``."""
    return os.path.relpath(ROOT / plot, md_dir)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no screen here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get 4 significant digits, None and NaN become '-'."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_plain(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """The same table for a terminal (stdout)."""
    text = [[str(h) for h in header]]
    for r in rows:
        text.append([_plain(x) for x in r])
    widths = [max(len(row[i]) for row in text) for i in range(len(header))]
    for i, row in enumerate(text):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in
                        enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _plain(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "-" if not math.isfinite(x) else f"{x:.4g}"
    return str(x)
