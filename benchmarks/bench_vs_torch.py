"""Our executor against torch.distributed.pipelining: the same schedule, side by side.

    $ .venv/bin/python benchmarks/bench_vs_torch.py            # 4 ranks, 8 microbatches
    $ .venv/bin/python benchmarks/bench_vs_torch.py --quick    # 2 schedules, 2 rounds

One launch of P gloo processes on this machine (``pipeblocks.runtime.launch``) runs every case
below. For each PyTorch schedule class the installed torch has (GPipe, 1F1B, Interleaved1F1B,
LoopedBFS, ZBVZeroBubble, DualPipeV), both executors get the same model split, microbatches and
ranks, and **the same schedule**: PyTorch's class computes its order; ours runs that very
order, read from the class's ``pipeline_order`` (for GPipe and 1F1B, rebuilt from their
``_step_microbatches``, see ``_single_order_csv``); whether our generator of the same name
produces the identical order is reported beside it. Each executor has its own copy of the
model and its own communicator (PyTorch's on a second process group over the same ranks), so
nothing is shared but the machine. After one untimed warm-up step each, they alternate A B A B
for ``rounds`` rounds; a step is timed as the pipeline's makespan (a barrier, then
``perf_counter`` around ``step`` on every rank; latest end minus earliest start).

Cases:

- **emulated** (20 ms and 5 ms per pass): every F, B and W sleeps the same fixed time in both
  (BW twice). Ours: :class:`pipeblocks.runtime.EmulatedStage`. PyTorch: a module of two custom
  autograd Functions, an input path and a weight path, whose forward / backward sleep, so that
  PyTorch's own B/W split (``stage_backward_input`` / ``stage_backward_weight``) runs each
  half once. PyTorch's first stage runs no B and does the whole backward in W (its
  ``backward_weight_one_chunk``), so there it is B = 0, W = 2X; the simulated ideal of each side
  uses its own pass times. Same sleep routine in both (:func:`pipeblocks.runtime.emulate.emulated_sleep`).
- **real**: the small GPT (8 blocks, dim 64, 4 sequences of 32 tokens per microbatch), Adam,
  one torch thread per rank; both copies start from the same weights, and the losses of both
  are compared step by step (they must agree: same math, different order).

Writes ``benchmarks/results/vs_torch.json`` and ``docs/img/bench_vs_torch.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

NAME = "vs_torch"
# our generator name -> PyTorch class, stages per rank, placement
PAIRS = {
    "gpipe": ("ScheduleGPipe", 1, "loop"),
    "1f1b": ("Schedule1F1B", 1, "loop"),
    "interleaved-1f1b": ("ScheduleInterleaved1F1B", 2, "loop"),
    "looped-bfs": ("ScheduleLoopedBFS", 2, "loop"),
    "zb-v": ("ScheduleZBVZeroBubble", 2, "v"),
    "dualpipe-v": ("ScheduleDualPipeV", 2, "v"),
}
QUICK = ("1f1b", "zb-v")
MODEL = {"vocab": 256, "seq": 32, "dim": 64, "heads": 4, "layers": 8}
MICROBATCH = 4


# -- the rank processes (torch) ------------------------------------------------------------------


def _sleep(seconds: float) -> None:
    """The emulated pass of both sides: the one EmulatedStage uses (sleep, then a short spin)."""
    from pipeblocks.runtime.emulate import emulated_sleep

    emulated_sleep(seconds)


def _torch_emulated(ms: float, first: bool) -> Any:
    """PyTorch's emulated stage: F sleeps X; the input path's and the weight path's backward
    each sleep X (on the first stage, whose input needs no gradient, both hang off weights)."""
    import torch

    class InputPath(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, w: Any, seconds: float) -> Any:
            ctx.seconds = seconds
            ctx.wshape = None if w is None else w.shape
            _sleep(seconds)
            return x.clone()

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            _sleep(ctx.seconds)
            # contiguous: the loss's gradient arrives expanded (stride 0), and PyTorch sizes
            # its receive buffers from the first gradient it sees
            return g.contiguous(), (None if ctx.wshape is None else torch.zeros(ctx.wshape)), None

    class WeightPath(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, w: Any, shape: Any, seconds: float) -> Any:
            ctx.seconds, ctx.wshape = seconds, w.shape
            return torch.zeros(shape)

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            _sleep(ctx.seconds)
            return torch.zeros(ctx.wshape), None, None

    class Emulated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            # the first stage's input needs no gradient: give its input path a weight of its
            # own, so that its backward runs (on other stages that would put it in W too)
            self.w_in = torch.nn.Parameter(torch.zeros(1)) if first else None

        def forward(self, x: Any) -> Any:
            s = ms / 1e3
            return InputPath.apply(x, self.w_in, s) + WeightPath.apply(self.w, x.shape, s)

    return Emulated()


def _torch_order_csv(sched: Any) -> str:
    """PyTorch's compute order as its compute-only CSV (what pipeblocks' torch_csv reads)."""
    rows = []
    for rank in sorted(sched.pipeline_order):
        cells = [str(a) for a in sched.pipeline_order[rank] if a is not None and a.is_compute_op]
        rows.append(",".join(cells))
    return "\n".join(rows) + "\n"


def _single_order_csv(cls_name: str, P: int, m: int) -> str:
    """The order ScheduleGPipe / Schedule1F1B run (their ``_step_microbatches``), as CSV.

    Their ``pipeline_order`` attribute is only a sketch (1F1B's lists rank 1 from F1 to F4),
    so the order is rebuilt from what ``_step_microbatches`` does: GPipe runs every F, then
    every full backward, both in microbatch order; 1F1B runs min(m, S - stage) F's, then a
    backward and a forward in turn, then the remaining backwards.
    """
    rows = []
    for r in range(P):
        if cls_name == "ScheduleGPipe":
            cells = [f"{r}F{j}" for j in range(m)] + [f"{r}B{j}" for j in range(m)]
        else:
            warm = min(m, P - r)
            cells = [f"{r}F{j}" for j in range(warm)]
            f, b = warm, 0
            while True:
                cells.append(f"{r}B{b}")
                b += 1
                if f == m:
                    break
                cells.append(f"{r}F{f}")
                f += 1
            cells += [f"{r}B{j}" for j in range(b, m)]
        rows.append(",".join(cells))
    return "\n".join(rows) + "\n"


def _case_pair(name: str, case: dict[str, Any], rank: int, P: int, pt_group: Any) -> dict[str, Any]:
    """Both executors for one schedule and case: step functions and what they report."""
    import torch
    import torch.distributed.pipelining as pp

    from pipeblocks.generators import generate
    from pipeblocks.ir.formats import torch_csv
    from pipeblocks.ir.spec import Placement
    from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
    from pipeblocks.runtime import EmulatedStage, Executor
    from pipeblocks.runtime.split import ends_layout, split

    cls_name, v, placement = PAIRS[name]
    m, S = case["m"], P * v
    ours_gen = generate(name, P, m)
    mine = list(ours_gen.spec.stages_of(rank))
    cfg = GPTConfig(**MODEL)
    batch = m * MICROBATCH
    emulated = case["kind"] == "emulated"
    if emulated:
        pt_mods = {s: _torch_emulated(case["ms"], s == 0) for s in mine}
        def pt_loss(out: Any, tgt: Any) -> Any:
            return out.sum() * 0.0
    else:
        copy_a = split(TinyGPT(cfg, seed=0), S, ends_layout(cfg.layers, S))
        copy_b = split(TinyGPT(cfg, seed=0), S, ends_layout(cfg.layers, S))
        pt_mods = {s: copy_b[s] for s in mine}
        pt_loss = lm_loss
    stages = [pp.PipelineStage(pt_mods[s], s, S, torch.device("cpu"), group=pt_group)
              for s in mine]
    cls = getattr(pp, cls_name)
    pt_sched = cls(stages[0] if v == 1 else stages, n_microbatches=m, loss_fn=pt_loss)
    csv = _single_order_csv(cls_name, P, m) if v == 1 else _torch_order_csv(pt_sched)
    order = torch_csv.loads(csv, placement=Placement(placement), num_microbatches=m,
                            stages_per_rank=v).renamed(f"{name} (PyTorch's order)")
    if emulated:
        runners: dict[int, Any] = {s: EmulatedStage(s, S, case["ms"], (MICROBATCH, cfg.seq,
                                                                    cfg.dim)) for s in mine}
        ex = Executor(order, runners, None, None, rank=rank)
        pt_opt = None
    else:
        mods_a = {s: copy_a[s] for s in mine}
        ex = Executor(order, mods_a, lm_loss, torch.optim.Adam(
            [p for mod in mods_a.values() for p in mod.parameters()], lr=3e-3), rank=rank)
        pt_opt = torch.optim.Adam([p for mod in pt_mods.values() for p in mod.parameters()],
                                  lr=3e-3)
    has_first, has_last = 0 in mine, S - 1 in mine

    def data(step: int) -> tuple[Any, Any]:
        tokens, targets = synthetic_batch(cfg, batch, seed=0, step=step)
        if emulated:
            return torch.zeros(batch, cfg.seq, cfg.dim), torch.zeros(batch)
        return tokens, targets

    cpu: dict[str, float] = {}  # CPU ms of this rank's last step, every thread

    def ours(step: int) -> float | None:
        x, y = data(step)
        t0 = time.process_time()
        res = ex.step(x, y)
        cpu["ours"] = (time.process_time() - t0) * 1e3
        return res.loss

    def theirs(step: int) -> float | None:
        x, y = data(step)
        t0 = time.process_time()
        losses: list[Any] = []
        if pt_opt is not None:
            pt_opt.zero_grad(set_to_none=True)
        args = (x,) if has_first else ()
        kwargs = {"target": y, "losses": losses} if has_last else {}
        pt_sched.step(*args, return_outputs=False, **kwargs)
        if pt_opt is not None:
            pt_opt.step()
        cpu["torch"] = (time.process_time() - t0) * 1e3
        return sum(float(t.detach()) for t in losses) / len(losses) if losses else None

    return {"ours": ours, "torch": theirs, "cpu": cpu, "csv": csv, "class": cls_name,
            "same_as_generator": order.programs == ours_gen.programs}


def worker(config: dict[str, Any]) -> int:
    """One rank: every case and schedule, both executors alternating; rank 0 writes the JSON."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, P = dist.get_rank(), dist.get_world_size()
    pt_group = dist.new_group(list(range(P)))
    out: list[dict[str, Any]] = []
    for case in config["cases"]:
        for name in config["schedules"]:
            if rank == 0:
                c.log(f"vs_torch: {case['kind']} {case.get('ms', '')} {name}")
            pair = _case_pair(name, case, rank, P, pt_group)
            times: dict[str, list[float]] = {"ours": [], "torch": []}
            cpus: dict[str, list[float]] = {"ours": [], "torch": []}
            losses: dict[str, list[float | None]] = {"ours": [], "torch": []}
            for step in range(case.get("rounds", config["rounds"]) + 1):
                for side in ("ours", "torch"):
                    ms, loss = c.timed_step(pair[side], step)
                    used = torch.tensor([pair["cpu"][side]], dtype=torch.float64)
                    dist.all_reduce(used)  # CPU ms of the step over all ranks
                    losses[side].append(loss)
                    if step:  # step 0 warms up (shapes, communicators)
                        times[side].append(ms)
                        cpus[side].append(float(used))
            out.append({"case": case, "schedule": name, "torch_class": pair["class"],
                        "same_as_generator": pair["same_as_generator"], "order_csv": pair["csv"],
                        "ours_ms": times["ours"], "torch_ms": times["torch"],
                        "ours_cpu_ms": cpus["ours"], "torch_cpu_ms": cpus["torch"],
                        "ours_loss": losses["ours"], "torch_loss": losses["torch"]})
            dist.barrier()
    if rank == 0:
        Path(config["out"]).write_text(json.dumps(out))
    dist.destroy_process_group()
    return 0


# -- the launcher and the report (no torch) ------------------------------------------------------


def _ideal(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """Simulated makespans (ms, no transfer cost) of the order with each side's pass times."""
    if row["case"]["kind"] != "emulated":
        return None, None
    from pipeblocks.ir.formats import torch_csv
    from pipeblocks.ir.spec import Placement
    from pipeblocks.sim import parse_costs, simulate

    _, v, placement = PAIRS[row["schedule"]]
    x = row["case"]["ms"]
    order = torch_csv.loads(row["order_csv"], placement=Placement(placement),
                            num_microbatches=row["case"]["m"], stages_per_rank=v)
    S = order.spec.num_stages
    ours = parse_costs({"stages": [{"f": x, "b": x, "w": x}] * S})
    # PyTorch's first stage: no B, the whole backward in W
    theirs = parse_costs({"stages": [{"f": x, "b": 0.0, "w": 2 * x}] +
                          [{"f": x, "b": x, "w": x}] * (S - 1)})
    return simulate(order, ours).makespan, simulate(order, theirs).makespan


def run(quick: bool = False, ranks: int = 4, microbatches: int = 8,
        rounds: int | None = None) -> dict[str, Any]:
    from pipeblocks.runtime.launch import launch

    rounds = rounds or (2 if quick else 5)
    schedules = QUICK if quick else tuple(PAIRS)
    cases = [{"kind": "emulated", "ms": 20.0, "m": microbatches},
             {"kind": "emulated", "ms": 5.0, "m": microbatches},
             # real steps are short and noisier (4 ranks share 2 cores): more rounds
             {"kind": "real", "m": microbatches, "rounds": 2 * rounds}]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        config = {"cases": cases, "schedules": schedules, "rounds": rounds, "out": str(out)}
        c.log(f"vs_torch: launching {ranks} ranks ({len(cases)} cases x {len(schedules)} "
              f"schedules x {rounds} rounds)")
        before = c.load_average()
        res = launch([c.PYTHON, __file__, "--worker", json.dumps(config)], ranks,
                     deadline=1500, grace=10)
        load = [before, c.load_average()]
        if not res.ok:
            raise RuntimeError(f"bench_vs_torch ranks failed: codes {res.codes} {res.fault}")
        rows = json.loads(out.read_text())
    for r in rows:
        r["ours"], r["torch"] = c.spread(r["ours_ms"]), c.spread(r["torch_ms"])
        r["ratio"] = r["ours"]["median"] / r["torch"]["median"]
        # the same, round by round (each A B pair ran under the same load), and in CPU time
        r["ratio_paired"] = statistics.median(
            a / b for a, b in zip(r["ours_ms"], r["torch_ms"], strict=True))
        r["cpu_ratio"] = (statistics.median(r["ours_cpu_ms"]) /
                          statistics.median(r["torch_cpu_ms"]))
        r["ideal_ours_ms"], r["ideal_torch_ms"] = _ideal(r)
        pairs = [(a, b) for a, b in zip(r["ours_loss"], r["torch_loss"], strict=True)
                 if a is not None and b is not None]
        r["loss_max_abs_diff"] = max((abs(a - b) for a, b in pairs), default=None)
    result = {"ranks": ranks, "microbatches": microbatches, "rounds": rounds, "load": load,
              "microbatch_size": MICROBATCH, "model": MODEL, "rows": rows}
    result["plot"] = str(plot(result, quick).relative_to(c.ROOT))
    c.write_result(NAME, result, quick)
    return result


def _label(case: dict[str, Any]) -> str:
    return f"emulated {case['ms']:g} ms" if case["kind"] == "emulated" else "real (small GPT)"


def plot(result: dict[str, Any], quick: bool) -> Path:
    plt = c.pyplot()
    labels = list(dict.fromkeys(_label(r["case"]) for r in result["rows"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels), 4), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        rows = [r for r in result["rows"] if _label(r["case"]) == label]
        xs = range(len(rows))
        for off, side, color in ((-0.2, "ours", "#0072b2"), (0.2, "torch", "#d55e00")):
            med = [r[side]["median"] for r in rows]
            err = [[r[side]["median"] - r[side]["min"] for r in rows],
                   [r[side]["max"] - r[side]["median"] for r in rows]]
            ax.bar([x + off for x in xs], med, 0.4, yerr=err, capsize=2, color=color,
                   label="pipeblocks" if side == "ours" else "torch.distributed.pipelining")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["schedule"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_ylabel("step time, ms (median; bars: min-max)", fontsize=8)
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(f"{r['ratio']:.2f}", (x, max(r["ours"]["max"], r["torch"]["max"])),
                        ha="center", va="bottom", fontsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Same schedule, {result['ranks']} gloo ranks, {result['microbatches']} "
                 f"microbatches; numbers: ours / PyTorch", fontsize=10)
    fig.tight_layout()
    path = c.image_path(NAME, quick)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(result: dict[str, Any], md_dir: Path = c.ROOT / "docs") -> str:
    lines = [
        "## Executor vs torch.distributed.pipelining",
        "",
        f"{result['ranks']} CPU processes (gloo), {result['microbatches']} microbatches, the "
        f"same schedule in both: PyTorch's class computes the order and our executor runs that "
        f"order (*gen* says whether our generator of that name makes the identical order). "
        f"One launch; after a warm-up step each, the two alternate A B A B for "
        f"{result['rounds']} rounds ({2 * result['rounds']} for real compute); step time = the pipeline's makespan (barrier, then the "
        f"latest end minus the earliest start). *spread* = (max - min) / median. *ideal*: the "
        f"simulated makespan of that order with each side's pass times and no transfer cost "
        f"(PyTorch's first stage runs no B and a 2X W). See `benchmarks/bench_vs_torch.py` "
        f"for how the passes are emulated. *paired*: the median over rounds of ours / "
        f"PyTorch within a round (the two steps of a round ran under the same load); *CPU "
        f"ours / PyTorch*: the CPU time all ranks used per step (`process_time`, every "
        f"thread), medians; where 4 ranks share 2 cores, CPU time is what the step waits "
        f"for. *loss diff*: the largest difference between the two sides' losses over the "
        f"steps (same weights, same batches)." + (
            f" Load average before and after the launch: {result['load'][0]:g} -> "
            f"{result['load'][1]:g} (2 cores)." if result.get("load") else ""),
        "",
    ]
    head = ["case", "schedule", "PyTorch class", "gen", "ours ms", "spread", "PyTorch ms",
            "spread", "ours / PyTorch", "paired", "CPU ours / PyTorch", "ours / ideal",
            "PyTorch / ideal", "loss diff"]
    rows = []
    for r in result["rows"]:
        rows.append([_label(r["case"]), r["schedule"], r["torch_class"],
                     "same" if r["same_as_generator"] else "differs", r["ours"]["median"],
                     r["ours"]["rel_spread"], r["torch"]["median"], r["torch"]["rel_spread"],
                     r["ratio"], r.get("ratio_paired"), r.get("cpu_ratio"),
                     r["ours"]["median"] / r["ideal_ours_ms"] if r["ideal_ours_ms"] else None,
                     r["torch"]["median"] / r["ideal_torch_ms"] if r["ideal_torch_ms"] else None,
                     r["loss_max_abs_diff"]])
    lines += [c.table(head, rows), ""]
    lines += [f"![executor vs PyTorch]({c.link(result['plot'], md_dir)})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1f1b and zb-v, 2 rounds")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=None, help="timed A B rounds (default 5)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        return worker(json.loads(args.worker))
    result = run(args.quick, args.ranks, args.microbatches, args.rounds)
    c.print_table(["case", "schedule", "ours ms", "PyTorch ms", "ours/PyTorch", "loss diff"],
                  [[_label(r["case"]), r["schedule"], r["ours"]["median"],
                    r["torch"]["median"], r["ratio"], r["loss_max_abs_diff"]]
                   for r in result["rows"]])
    return 0


if __name__ == "__main__":
    if "RANK" in os.environ and "--worker" not in sys.argv:
        print("run bench_vs_torch.py without torchrun: it starts its own ranks", file=sys.stderr)
    sys.exit(main())
