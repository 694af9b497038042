"""Bubble filling: the main job's slowdown with fill, and the share of the bubble fill uses.

    $ .venv/bin/python benchmarks/bench_fill.py            # 1f1b and v-min, p = 4, m = 8, 12 pairs
    $ .venv/bin/python benchmarks/bench_fill.py --quick    # 3 pairs

One launch of p = 4 gloo processes per schedule runs it on the executor with emulated stages
(:class:`pipeblocks.runtime.EmulatedStage`: every F, B and W sleeps 20 ms, BW 40 ms). Each rank
has a :class:`pipeblocks.runtime.fill.FillRunner` with an endless queue of 5 ms fill tasks (each
an emulated 5 ms sleep), the slots from :func:`pipeblocks.sim.fill.place_fill` on the schedule
simulated with unit costs per rank (a unit is v passes: 20 ms at v = 1, 40 ms at v = 2) and a
delay bound of 0. Steps go in pairs, without fill then with it (the same executor, the runner attached or not), after a warm-up pair; a
step's time is its makespan (barrier, then the latest end minus the earliest start).

Fill runs in every wait of a rank: before its first pass (the warm-up), between passes, and
after its last (the cool-down, until the step's simulated end). Reported per schedule:
``fill_slowdown`` (median step with fill over median step without;
``fill_slowdown_paired``, the median of each pair's ratio, is steadier on a loaded machine),
``fill_bubble_used``
(fill seconds per step, all ranks, over ``bubble_ms``: the whole simulated bubble, every
rank's idle time in the simulated step, warm-up and cool-down waits included;
``bubble_between_passes_ms`` is the part between passes, all fill could use before) and the
simulator's own placement of the same tasks.
Acceptance (issue 18): slowdown at most 1.02 and at least 0.60 of the bubble used.

Writes ``benchmarks/results/fill.json`` and ``docs/img/bench_fill.png`` (where fill ran in the
last step of 1f1b).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

NAME = "fill"
P, M, PASS_MS, TASK_MS = 4, 8, 20.0, 5.0
SCHEDULES = ("1f1b", "v-min")
TARGET_SLOWDOWN, TARGET_USED = 1.02, 0.60


def worker(config: dict[str, Any]) -> int:
    """One rank: pairs of steps without and with fill; rank 0 writes the rows."""
    import time

    import torch
    import torch.distributed as dist

    from pipeblocks.generators import generate
    from pipeblocks.runtime import EmulatedStage, Executor
    from pipeblocks.runtime.emulate import emulated_sleep
    from pipeblocks.runtime.fill import FillRunner, FillWork
    from pipeblocks.sim import UniformCosts, simulate
    from pipeblocks.sim.fill import place_fill

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    schedule = generate(config["schedule"], P, M)
    S = schedule.spec.num_stages
    sim = simulate(schedule, UniformCosts(f=1, b=1, w=1))
    slots = place_fill(sim, [], edges=True).slots[rank]  # lead, between passes, tail
    task = FillWork(lambda: emulated_sleep(TASK_MS / 1e3), TASK_MS / 1e3, name="sleep")
    # UniformCosts are per rank: a stage's pass is 1/v unit, so one unit is v passes
    unit = PASS_MS * schedule.spec.stages_per_rank / 1e3
    runner = FillRunner(schedule, rank, slots, [task] * 100_000, seconds_per_unit=unit,
                        max_delay=0.0)
    ex = Executor(schedule, {s: EmulatedStage(s, S, PASS_MS, (4, 32, 64)) for s in
                             schedule.spec.stages_of(rank)}, None, None, rank=rank)
    batch = torch.zeros(M * 4, 32, 64)
    rows: list[tuple[str, float, float, float]] = []
    last_spans: list[Any] = []
    for pair in range(config["pairs"] + 1):
        for mode in ("plain", "fill"):
            ex.fill = runner if mode == "fill" else None
            before, n_before = runner.fill_seconds, len(runner.spans)
            dist.barrier()
            t0 = time.perf_counter()
            res = ex.step(batch)
            if pair and mode == "fill":
                last_spans = runner.spans[n_before:]
            if pair:
                rows.append((mode, t0, res.end, runner.fill_seconds - before))
    got: list[Any] = [None] * P
    spans = [(s.rank, s.task, s.name, s.start, s.end) for s in last_spans]
    dist.all_gather_object(got, (rows, runner.report(), spans))
    if rank == 0:
        Path(config["out"]).write_text(json.dumps(got))
    dist.destroy_process_group()
    return 0


def _summarise(name: str, got: list[Any]) -> dict[str, Any]:
    from pipeblocks.generators import generate
    from pipeblocks.sim import UniformCosts, simulate
    from pipeblocks.sim.fill import FillTask, place_fill

    sim = simulate(generate(name, P, M), UniformCosts(f=1, b=1, w=1))
    unit = PASS_MS * sim.schedule.spec.stages_per_rank / 1e3  # per-rank costs: see worker
    usable = sum(place_fill(sim, []).bubble) * unit  # the gaps between passes
    whole = sum(sim.idle) * unit
    simulated = place_fill(sim, [FillTask(TASK_MS / 1e3 / unit)] * 100_000, edges=True)
    steps: dict[str, list[float]] = {"plain": [], "fill": []}
    fill_s: list[float] = []
    n = len(got[0][0])
    for i in range(n):
        mode = got[0][0][i][0]
        steps[mode].append(max(g[0][i][2] for g in got) - min(g[0][i][1] for g in got))
        if mode == "fill":
            fill_s.append(sum(g[0][i][3] for g in got))
    plain, fill = statistics.median(steps["plain"]), statistics.median(steps["fill"])
    per_step = statistics.median(fill_s)
    reports = [g[1] for g in got]
    return {
        "schedule": name, "p": P, "m": M, "pass_ms": PASS_MS, "task_ms": TASK_MS,
        "simulated_ms": sim.makespan * unit * 1e3,
        "step_ms_plain": plain * 1e3, "step_ms_fill": fill * 1e3,
        "fill_slowdown": fill / plain,
        # robust to a loaded machine: each pair's steps run back to back, so load drift cancels
        "fill_slowdown_paired": statistics.median(
            f / p for p, f in zip(steps["plain"], steps["fill"], strict=True)),
        "fill_tasks_done": sum(r["fill_tasks_done"] for r in reports),
        "fill_tasks_per_step": per_step / (TASK_MS / 1e3),
        "fill_bubble_used": per_step / whole,
        "bubble_ms": whole * 1e3, "bubble_between_passes_ms": usable * 1e3,
        "sim_fill_bubble_used": simulated.bubble_used,
        "fill_max_overrun_ms": max(r["fill_max_overrun"] for r in reports) * 1e3,
        "fill_errors": [e for r in reports for e in r["fill_errors"]],
        "steps_ms": {k: [x * 1e3 for x in v] for k, v in steps.items()},
        "last_fill_spans": [g[2] for g in got],
    }


def _picture(row: dict[str, Any], quick: bool) -> None:
    from pipeblocks.generators import generate
    from pipeblocks.sim import UniformCosts, simulate
    from pipeblocks.sim.fill import FillSpan

    try:
        from pipeblocks.visual.fill import draw_fill
    except ImportError:
        return
    sim = simulate(generate(row["schedule"], P, M), UniformCosts(f=1, b=1, w=1))
    spans = [[FillSpan(*s) for s in rank] for rank in row["last_fill_spans"]]
    path = c.image_path(NAME, quick)
    used = row["fill_bubble_used"]
    draw_fill(sim, spans, path, title=f"{row['schedule']} p={P} m={M}: where fill ran "
              f"(measured, last step; fill used {used:.0%} of the whole bubble per step)")
    c.log(f"wrote {path.relative_to(c.ROOT)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 pairs of steps, not 12")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    from pipeblocks.runtime.launch import launch

    load = c.load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCHEDULES:
            c.log(f"fill: {name} p={P} m={M}")
            out = Path(tmp) / f"{name}.json"
            cfg = {"schedule": name, "pairs": 3 if args.quick else 12, "out": str(out)}
            res = launch([c.PYTHON, __file__, "--worker", json.dumps(cfg)], P, capture=True,
                         deadline=600)
            if res.codes != (0,) * P:
                raise SystemExit(f"{name}: ranks failed {res.codes}: {res.fault} {res.stderr}")
            rows.append(_summarise(name, json.loads(out.read_text())))
    c.print_table(
        ["schedule", "sim ms", "plain ms", "fill ms", "slowdown", "paired", "bubble ms",
         "bubble used", "sim used", "tasks/step", "ok"],
        [[r["schedule"], r["simulated_ms"], r["step_ms_plain"], r["step_ms_fill"],
          r["fill_slowdown"], r["fill_slowdown_paired"], r["bubble_ms"], r["fill_bubble_used"],
          r["sim_fill_bubble_used"], r["fill_tasks_per_step"],
          r["fill_slowdown"] <= TARGET_SLOWDOWN and r["fill_bubble_used"] >= TARGET_USED]
         for r in rows])
    print(f"load average at the start: {load:.2f} (1 min); targets: slowdown <= "
          f"{TARGET_SLOWDOWN}, bubble used >= {TARGET_USED}")
    c.write_result(NAME, {"load_average": load, "rows": rows}, args.quick)
    _picture(rows[0], args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
