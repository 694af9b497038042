"""Fidelity: measured step time over simulated, for every generator, emulated and real.

    $ .venv/bin/python benchmarks/bench_fidelity.py            # p = 4 and 8 (m = 2p), real at p = 2 and 4
    $ .venv/bin/python benchmarks/bench_fidelity.py --quick    # p = 4, 3 generators

**Emulated** (20 ms and 5 ms per pass): one launch of p gloo processes per p runs every
registered generator's schedule (m = 2p) on our executor with
:class:`pipeblocks.runtime.EmulatedStage` (every F, B and W sleeps X ms, BW 2X, tensors of the
small GPT's activation shape go between ranks). The simulator times the same schedule with
every pass X ms and a transfer cost c, c being the measured one-way time of one activation
from rank 0 to rank 1 (median of 20, receiver waiting). Measured = the median makespan of
``rounds`` steps after a warm-up step (barrier, then latest end minus earliest start).

**Real compute**: the small GPT (8 blocks, dim 64, 4 sequences of 32 tokens per microbatch,
Adam, one torch thread per rank) split as ``pipeblocks train`` splits it; its pass times are
profiled first in this process (:func:`pipeblocks.runtime.profile.profile_stages`, wall clock,
median of 20, for the p and the 2p-stage splits) and the simulator uses those per-stage costs
plus c. The simulator gives every rank a device of its own: at p = 2 the ranks can each have
a core of this 2-core machine when nothing else runs on it, at p = 4 they must share; the
report gives the cores the ranks actually obtained (their CPU time over the wall time).

Writes ``benchmarks/results/fidelity.json`` and ``docs/img/bench_fidelity.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import _trace  # noqa: E402

NAME = "fidelity"
MODEL = {"vocab": 256, "seq": 32, "dim": 64, "heads": 4, "layers": 8}
MICROBATCH = 4
EMULATE_MS = (20.0, 5.0)
TARGETS = {20.0: 1.05, 5.0: 1.10}
QUICK_GENERATORS = ("1f1b", "zb-v", "v-half")
SEARCH_BUDGETS = (0.6, 1.0)  # real compute also runs what the search picks for the profiled costs


# -- the rank processes (torch) ------------------------------------------------------------------


def worker(config: dict[str, Any]) -> int:
    """One rank: every generator and case on our executor; rank 0 writes the measured rows."""
    import torch
    import torch.distributed as dist

    from pipeblocks.generators import generate
    from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
    from pipeblocks.runtime import EmulatedStage, Executor
    from pipeblocks.runtime.split import ends_layout, split

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, P = dist.get_rank(), dist.get_world_size()
    m = config["m"]
    if config.get("plain_sleep"):  # an experiment: no spin at the end of an emulated pass
        import time as _time

        EmulatedStage._sleep = lambda self, factor=1.0: _time.sleep(  # type: ignore[method-assign]
            self.seconds * factor)
    cfg = GPTConfig(**MODEL)
    comm = c.ping_ms((MICROBATCH, cfg.seq, cfg.dim))
    post_us = c.post_cost_us()
    rows = []
    from pipeblocks.ir.formats import json_io

    for case in config["cases"]:
        extra = config.get("extra", {}) if case["kind"] == "real" else {}
        for name in [*config["generators"], *extra]:
            if rank == 0:
                c.log(f"fidelity p={P}: {case['kind']} {case.get('ms', '')} {name}")
            schedule = json_io.loads(extra[name]) if name in extra else generate(name, P, m)
            S = schedule.spec.num_stages
            mine = schedule.spec.stages_of(rank)
            if case["kind"] == "emulated":
                runners: dict[int, Any] = {s: EmulatedStage(s, S, case["ms"], (
                    MICROBATCH, cfg.seq, cfg.dim)) for s in mine}
                ex = Executor(schedule, runners, None, None, rank=rank, record=True)
            else:
                parts = split(TinyGPT(cfg, seed=0), S, ends_layout(cfg.layers, S))
                mods = {s: parts[s] for s in mine}
                opt = torch.optim.Adam([q for mod in mods.values() for q in mod.parameters()],
                                       lr=3e-3)
                ex = Executor(schedule, mods, lm_loss, opt, rank=rank, record=True)
            times = []
            last: dict[str, Any] = {}
            for step in range(config["rounds"] + 1):
                tokens, targets = synthetic_batch(cfg, m * MICROBATCH, seed=0, step=step)
                ms, _ = c.timed_step(_step_loss, ex, tokens, targets, last)
                if step:
                    times.append(ms)
            traces: list[Any] = [None] * P if rank == 0 else []
            dist.gather_object((last["trace"], _trace.posts_between(ex.program), last["cpu_ms"]),
                               traces if rank == 0 else None, dst=0)
            rows.append({"case": case, "schedule": name, "p": P, "m": m,
                         "schedule_json": extra.get(name),
                         "stages_per_rank": schedule.spec.stages_per_rank, "measured_ms": times,
                         "trace": _trace.trace_summary(traces, case) if rank == 0 else {}})
    if rank == 0:
        Path(config["out"]).write_text(json.dumps({"comm_ms": comm, "post_us": post_us,
                                                   "rows": rows}))
    dist.destroy_process_group()
    return 0


def _step_loss(ex: Any, tokens: Any, targets: Any, last: dict[str, Any]) -> float | None:
    import time

    cpu = time.process_time()  # every thread of this rank: Python, torch, gloo's
    res = ex.step(tokens, targets)
    last["cpu_ms"] = (time.process_time() - cpu) * 1e3
    last["wall_ms"] = res.seconds * 1e3
    last["trace"] = res.trace
    return res.loss  # type: ignore[no-any-return]


IDLE_MS = 5.0  # a second profile sleeps this long before each timed pass (note "idle")


def profiled_costs(num_stages: int, reps: int = 20, idle_ms: float = 0.0) -> dict[str, Any]:
    """The small GPT split into ``num_stages`` as train splits it: its costs-file object."""
    import torch

    from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
    from pipeblocks.runtime.profile import profile_stages
    from pipeblocks.runtime.split import ends_layout, split

    torch.set_num_threads(1)
    cfg = GPTConfig(**MODEL)
    parts = split(TinyGPT(cfg, seed=0), num_stages, ends_layout(cfg.layers, num_stages))
    tokens, targets = synthetic_batch(cfg, MICROBATCH)
    prof = profile_stages(parts, tokens, targets, lm_loss, reps=reps, warmup=3, clock="wall",
                          idle_ms=idle_ms)
    return prof.costs()


# -- the launcher and the report (no torch in this part) -----------------------------------------


def _launch(P: int, m: int, cases: list[dict[str, Any]], generators: list[str],
            rounds: int, extra: dict[str, str] | None = None,
            plain_sleep: bool = False) -> dict[str, Any]:
    from pipeblocks.runtime.launch import launch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        config = {"m": m, "cases": cases, "generators": generators, "rounds": rounds,
                  "out": str(out), "extra": extra or {}, "plain_sleep": plain_sleep}
        c.log(f"fidelity: launching {P} ranks ({len(cases)} cases x {len(generators)} "
              f"generators x {rounds} rounds)")
        before = c.load_average()
        res = launch([c.PYTHON, __file__, "--worker", json.dumps(config)], P, deadline=1500,
                     grace=10)
        if not res.ok:
            raise RuntimeError(f"bench_fidelity ranks failed: codes {res.codes} {res.fault}")
        got: dict[str, Any] = json.loads(out.read_text())
        got["load"] = [before, c.load_average()]
        return got


def _simulated(row: dict[str, Any], comm: float, profiles: dict[int, dict[str, Any]],
               inrun: bool = False) -> float:
    from pipeblocks.generators import generate
    from pipeblocks.ir.formats import json_io
    from pipeblocks.sim import parse_costs, simulate

    schedule = (json_io.loads(row["schedule_json"]) if row.get("schedule_json") else
                generate(row["schedule"], row["p"], row["m"]))
    S = schedule.spec.num_stages
    if row["case"]["kind"] == "emulated":
        x = row["case"]["ms"]
        costs = parse_costs({"stages": [{"f": x, "b": x, "w": x}] * S, "comm": comm})
    elif inrun:
        costs = parse_costs({**_trace.inrun_costs(row, S), "comm": comm})
    else:
        costs = parse_costs({**profiles[S], "comm": comm})
    return simulate(schedule, costs).makespan


def _searched(P: int, m: int, costs: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The search's schedules for the profiled costs (JSON text by name), and a note."""
    from pipeblocks.errors import SpecError
    from pipeblocks.ir.formats import json_io
    from pipeblocks.sim import parse_costs

    fn, note = c.search_api()
    if fn is None:
        return {}, note
    out, notes = {}, []
    for budget in SEARCH_BUDGETS:
        try:
            res = fn((P, m), parse_costs(costs), budget)
        except SpecError as e:
            notes.append(f"p={P}: no schedule within {budget} x 1F1B's peak ({e})")
            continue
        out[f"search@{budget:g}"] = json_io.dumps(res.schedule)
    return out, "; ".join(notes)


def run(quick: bool = False, rounds: int | None = None,
        plain_sleep: bool = False) -> dict[str, Any]:
    from pipeblocks.generators import names

    rounds = rounds or (2 if quick else 4)
    generators = list(QUICK_GENERATORS if quick else names())
    emulated = [{"kind": "emulated", "ms": ms} for ms in EMULATE_MS]
    plan = [(4, emulated + ([] if quick else [{"kind": "real"}]))]
    if not quick:
        plan += [(8, emulated), (2, [{"kind": "real"}])]
    profiles: dict[int, dict[str, Any]] = {}
    idle_profiles: dict[int, dict[str, Any]] = {}
    for P in sorted({P for P, cases in plan if any(k["kind"] == "real" for k in cases)}):
        for S in (P, 2 * P):
            if S not in profiles:
                c.log(f"fidelity: profiling the small GPT on {S} stages")
                profiles[S] = profiled_costs(S)
                idle_profiles[S] = profiled_costs(S, reps=10, idle_ms=IDLE_MS)
    rows, comms, notes, loads, posts = [], {}, [], {}, {}
    for P, cases in plan:
        extra: dict[str, str] = {}
        if any(k["kind"] == "real" for k in cases):
            extra, note = _searched(P, 2 * P, profiles[2 * P])
            notes += [note] if note else []
        got = _launch(P, 2 * P, cases, generators, rounds, extra, plain_sleep)
        comms[P] = got["comm_ms"]
        posts[P] = got["post_us"]
        loads[P] = got["load"]
        for r in got["rows"]:
            r["comm_ms"] = got["comm_ms"]
            r["measured"] = c.spread(r["measured_ms"])
            r["simulated_ms"] = _simulated(r, got["comm_ms"], profiles)
            r["ratio"] = r["measured"]["median"] / r["simulated_ms"]
            if r["case"]["kind"] == "real":
                # the same schedule with the pass times this run measured (its last step)
                r["simulated_inrun_ms"] = _simulated(r, got["comm_ms"], profiles, inrun=True)
                r["ratio_inrun"] = r["measured"]["median"] / r["simulated_inrun_ms"]
                # with the profile taken after IDLE_MS of sleep before each pass
                r["simulated_idle_ms"] = _simulated(r, got["comm_ms"], idle_profiles)
                r["ratio_idle"] = r["measured"]["median"] / r["simulated_idle_ms"]
                prof = profiles[2 * r["p"] if r["stages_per_rank"] == 2 else r["p"]]["stages"]
                busy_prof = sum(x["f"] + x["b"] + x["w"] for x in prof)
                busy_run = sum(x["f"] + x["b"] + x["w"] for x in
                               _trace.inrun_costs(r, len(prof))["stages"])
                r["inrun_over_profiled"] = busy_run / busy_prof
                # CPU the ranks got per unit of wall time: at most the machine's cores
                r["cores_used"] = r["trace"]["cpu_ms"] / r["measured_ms"][-1]
                # the compute alone, all ranks together, as profiled: m x every stage's F+B+W
                r["profiled_work_ms"] = r["m"] * busy_prof
            target = TARGETS.get(r["case"].get("ms", -1.0))
            r["target"] = target
            r["met"] = None if target is None else r["ratio"] <= target
            rows.append(r)
    result = {"rounds": rounds, "plain_sleep": plain_sleep, "model": MODEL, "microbatch_size": MICROBATCH, "comm_ms": comms,
              "search_budgets": SEARCH_BUDGETS, "notes": notes, "load": loads,
              "post_us": posts,
              "profiles": {str(k): v for k, v in profiles.items()},
              "idle_ms": IDLE_MS, "idle_profiles": {str(k): v for k, v in idle_profiles.items()},
              "rows": rows}
    name = NAME + ("-plain-sleep" if plain_sleep else "")  # the experiment never overwrites
    result["plot"] = str(plot(result, quick, name).relative_to(c.ROOT))
    c.write_result(name, result, quick)
    return result


def _label(case: dict[str, Any]) -> str:
    return f"emulated {case['ms']:g} ms" if case["kind"] == "emulated" else "real (profiled)"


def plot(result: dict[str, Any], quick: bool, name: str = NAME) -> Path:
    plt = c.pyplot()
    rows = [r for r in result["rows"] if r["case"]["kind"] == "emulated"]
    groups = list(dict.fromkeys((_label(r["case"]), r["p"]) for r in rows))
    fig, ax = plt.subplots(figsize=(11, 4.2))
    names = list(dict.fromkeys(r["schedule"] for r in rows))
    width = 0.8 / max(1, len(groups))
    for k, (label, P) in enumerate(groups):
        by = {r["schedule"]: r for r in rows if (_label(r["case"]), r["p"]) == (label, P)}
        xs = [i + (k - (len(groups) - 1) / 2) * width for i, n in enumerate(names) if n in by]
        ax.bar(xs, [by[n]["ratio"] for n in names if n in by], width, label=f"{label}, p={P}")
    for y, style in ((1.0, "-"), (1.05, "--"), (1.10, ":")):
        ax.axhline(y, color="black", linewidth=0.7, linestyle=style)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("measured / simulated")
    lo = min(r["ratio"] for r in rows)
    ax.set_ylim(min(0.9, lo - 0.02), None)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Emulated passes: measured over simulated step time (lines: 1.0, targets 1.05 "
                 "and 1.10)", fontsize=10)
    fig.tight_layout()
    path = c.image_path(name, quick)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _where_time_goes(rows: list[dict[str, Any]], post_us: dict[str, Any]) -> str:
    """One paragraph from the emulated rows' traces: what the executor adds per pass."""
    import statistics

    out = []
    for P in sorted({r["p"] for r in rows if r["case"]["kind"] == "emulated"}):
        em = [r for r in rows if r["case"]["kind"] == "emulated" and r["p"] == P]
        per_post = [r["trace"]["gap_per_post"] for r in em
                    if r["trace"].get("gap_per_post") is not None]
        over = statistics.median(r["trace"]["overrun"] for r in em)
        gap = statistics.median(r["trace"]["gap"] for r in em)
        out.append(f"p = {P}: a pass overruns its X ms by {over:.3f} ms (median), a gap "
                   f"between passes takes {gap:.3f} ms, and each transfer posted in a gap adds "
                   f"about {statistics.median(per_post):.3f} ms")
    alone = ", ".join(f"p = {P}: {w:.0f} µs wall, {cpu:.0f} µs CPU"
                      for P, (w, cpu) in sorted(post_us.items(), key=lambda kv: int(kv[0])))
    return ("Where the time goes (medians over the generators): " + "; ".join(out) + ". "
            "Posting one gloo isend/irecv in a tight loop, by itself (`_common.post_cost_us`, "
            f"at the start of each launch): {alone or 'not measured'}. In the pipeline, p "
            "processes (and whatever else runs) share 2 cores, so a rank "
            "that wakes from a pass waits for a core before it can post its transfers and "
            "start the next pass. The simulator charges a transfer only its latency, not this "
            "per-post time on the critical path, so the gap grows with p, with the transfers "
            "per pass (V schedules post more), and with the load, and matters more at 5 ms "
            "than at 20 ms per pass.")


def _fit_text(t: dict[str, Any]) -> str:
    if t.get("gap_per_post") is None:
        return "-"
    return f"{t['gap_fixed']:.3f} + {t['gap_per_post']:.3f}·n"


def markdown(result: dict[str, Any], md_dir: Path = c.ROOT / "docs") -> str:
    comms = ", ".join(f"p={p}: {v:.3f} ms" for p, v in result["comm_ms"].items())
    lines = [
        "## Fidelity: measured / simulated",
        "",
        "Every registered generator, m = 2p, on our executor with gloo on this machine. "
        "Emulated: every F, B, W sleeps X ms (BW 2X); the simulator gives every pass X ms and "
        f"every transfer the measured one-way time of one activation ({comms}). Real: the "
        "small GPT, simulated with its profiled per-stage costs (`profile_stages`, wall clock) "
        f"plus the same transfer time. Measured: median makespan of {result['rounds']} steps "
        "after a warm-up step. Targets: <= 1.05 at 20 ms, <= 1.10 at 5 ms.",
        "",
        "The machine's 1-minute load average before and after each launch (2 cores; other "
        "work on the machine counts): " + ", ".join(
            f"p={p}: {a:g} -> {b:g}" for p, (a, b) in result.get("load", {}).items()) + ".",
        "",
    ]
    head = ["case", "p", "schedule", "v", "simulated ms", "measured ms", "spread",
            "measured / simulated", "target", "pass overrun ms", "gap ms", "gaps per step ms",
            "ms per gap + per post"]
    rows = []
    for r in result["rows"]:
        if r["case"]["kind"] != "emulated":
            continue
        mark = "met" if r["met"] else "**missed**"
        t = r["trace"]
        rows.append([_label(r["case"]), r["p"], r["schedule"], r["stages_per_rank"],
                     r["simulated_ms"], r["measured"]["median"], r["measured"]["rel_spread"],
                     r["ratio"], f"{r['target']} {mark}", t["overrun"], t["gap"],
                     t["gap_total"], _fit_text(t)])
    lines += [c.table(head, rows), ""]
    lines += [
        "*pass overrun*: median over every pass of the last step of (its length - X): sleep "
        "and wake-up lateness; *gap*: median time between a pass's end and the next pass's "
        "begin on a rank (posting transfers, the executor's bookkeeping); *gaps per step*: "
        "the largest sum of gaps over the ranks; *ms per gap + per post*: the least-squares "
        "line of a gap's length against the number of transfers the executor posts in it "
        "(all from the executor's own trace, `Executor(record=True)`, and its lowered "
        "program).",
        "",
    ]
    lines += [_where_time_goes(result["rows"], result.get("post_us", {})), ""]
    real = [r for r in result["rows"] if r["case"]["kind"] == "real"]
    if real:
        lines += [
            "Real compute. *simulated (profiled)* uses the costs `profile_stages` measured "
            "before the run, passes back to back; *idle profile* the costs measured with "
            f"{result.get('idle_ms', 5):g} ms of sleep before each pass (`idle_ms`, see the "
            "split section); *simulated (in-run)* uses the pass times the executor recorded "
            "in the run itself (median per stage and pass, last step); *in-run / profiled* "
            "is the ratio of the summed pass times: how much slower the same passes ran "
            "inside the pipeline than alone; *cores used*: the CPU time all ranks used in the "
            "last step (every thread, `time.process_time`) over its wall time, against the "
            f"{c.machine()['cores']} cores of the machine; *CPU ms*: that CPU time; *profiled "
            "work ms*: m x the profiled F + B + W of every stage, the compute alone. The "
            "simulator gives every rank a device of its own; where the ranks obtained about "
            "one core together, the step cannot be shorter than its CPU time on one core, and "
            "CPU ms - profiled work is what the executor, gloo and the optimizer cost on top. "
            "*search@B*: the schedule `pipeblocks.search` "
            "picks for the profiled costs within B x 1F1B's peak (the profile -> search -> "
            "train loop).",
            "",
        ]
        if result.get("notes"):
            lines += ["Note: " + "; ".join(result["notes"]) + ".", ""]
        head = ["p", "schedule", "v", "simulated (profiled) ms", "measured ms", "spread",
                "measured / simulated", "measured / simulated (idle profile)",
                "simulated (in-run) ms", "measured / simulated (in-run)",
                "in-run / profiled", "cores used", "CPU ms", "profiled work ms"]
        lines += [c.table(head, [[r["p"], r["schedule"], r["stages_per_rank"],
                                  r["simulated_ms"], r["measured"]["median"],
                                  r["measured"]["rel_spread"], r["ratio"], r.get("ratio_idle"),
                                  r["simulated_inrun_ms"], r["ratio_inrun"],
                                  r["inrun_over_profiled"], r.get("cores_used"),
                                  r["trace"].get("cpu_ms"), r.get("profiled_work_ms")]
                                 for r in real]), ""]
    lines += [f"![fidelity]({c.link(result['plot'], md_dir)})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="p = 4, 3 generators, 2 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timed steps per run (default 4)")
    ap.add_argument("--plain-sleep", action="store_true",
                    help="an experiment: emulated passes only sleep (no spin at the end, "
                    "about 50 us), to see what the spinning costs when ranks outnumber cores")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker(json.loads(args.worker))
    result = run(args.quick, args.rounds, args.plain_sleep)
    c.print_table(["case", "p", "schedule", "simulated ms", "measured ms", "ratio", "met"],
                  [[_label(r["case"]), r["p"], r["schedule"], r["simulated_ms"],
                    r["measured"]["median"], r["ratio"], r["met"]] for r in result["rows"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
