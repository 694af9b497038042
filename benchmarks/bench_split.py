"""The B/W split's cost: per-stage (B + W) / BW CPU time of the small GPT, and where it goes.

    $ .venv/bin/python benchmarks/bench_split.py            # three model sizes, 30 reps
    $ .venv/bin/python benchmarks/bench_split.py --quick    # the demo size, 5 reps

The small GPT (8 blocks, 4 stages as ``pipeblocks train`` splits it) is profiled with
:func:`pipeblocks.runtime.profile.profile_stages` on the CPU clock (``time.thread_time`` of
this thread, one torch thread, so other processes on the machine do not count): per stage the
median F, B, W and fused BW over ``reps``, split and fused alternated. The target (issue 8) is
(B + W) / BW <= 1.15 per stage. Then one middle stage's fused and split backward are taken
apart (``where_time_goes``): time in autograd engine calls, in W's own weight-gradient kernels
(:mod:`pipeblocks.runtime.direct`), in the frontier search, and the rest; and each pass is
repeated on one block's graph built once (``floor``): what the split costs with warm caches,
no planning and no graph building or freeing. Writes ``benchmarks/results/split.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

NAME = "split"
TARGET = 1.15
SIZES = [  # (dim, heads, seq, microbatch size)
    (64, 4, 32, 4),  # the demo's
    (64, 4, 32, 8),
    (256, 8, 64, 4),
]
STAGES = 4


def _parts(dim: int, heads: int, seq: int) -> tuple[Any, Any]:
    from pipeblocks.models.gpt import GPTConfig, TinyGPT
    from pipeblocks.runtime.split import ends_layout, split

    cfg = GPTConfig(vocab=256, seq=seq, dim=dim, heads=heads, layers=8)
    return cfg, split(TinyGPT(cfg, seed=0), STAGES, ends_layout(cfg.layers, STAGES))


def measure(dim: int, heads: int, seq: int, mbs: int, reps: int) -> dict[str, Any]:
    import torch

    from pipeblocks.models.gpt import lm_loss, synthetic_batch
    from pipeblocks.runtime.profile import profile_stages

    torch.set_num_threads(1)
    cfg, parts = _parts(dim, heads, seq)
    tokens, targets = synthetic_batch(cfg, mbs)
    prof = profile_stages(parts, tokens, targets, lm_loss, reps=reps, warmup=3, clock="cpu")
    rows = [{"stage": s.stage, "f": s.f, "b": s.b, "w": s.w, "bw": s.bw,
             "ratio": s.split_over_fused} for s in prof.stages]
    total = sum(r["b"] + r["w"] for r in rows) / sum(r["bw"] for r in rows)
    return {"dim": dim, "heads": heads, "seq": seq, "microbatch": mbs, "stages": rows,
            "total_ratio": total, "met": all(r["ratio"] <= TARGET for r in rows)}


def where_time_goes(dim: int, heads: int, seq: int, mbs: int, reps: int = 50) -> dict[str, Any]:
    """Stage 1's backward taken apart: engine calls, W's direct kernels, the frontier search,
    the rest (CPU ms).

    The autograd engine (``frontier._ENGINE``, through which every call of the stage goes),
    W's direct weight gradients (``frontier._direct``) and the frontier search
    (``Planner.plan``) are wrapped with ``time.thread_time`` counters
    while stage 1 runs ``reps`` microbatches fused, then split, alternated; medians per
    microbatch. The row "input path" is one engine call for the stage input's gradient alone
    over the whole stage (no segments, no captures): the least B can cost, so BW minus it is
    the least W can cost. A profiler would be simpler, but on passes of 1-3 ms its own
    overhead is as large as the difference it should explain.
    """
    import statistics
    import time

    import torch

    import pipeblocks.runtime.frontier as fr
    import pipeblocks.runtime.stage as stage_mod
    from pipeblocks.models.gpt import lm_loss, synthetic_batch

    torch.set_num_threads(1)
    cfg, parts = _parts(dim, heads, seq)
    tokens, _ = synthetic_batch(cfg, mbs)
    with torch.no_grad():
        x = parts[0](tokens)
        grad = torch.full_like(parts[1](x), 1e-3)
    acc = {"engine_s": 0.0, "engine_calls": 0, "plan_s": 0.0, "direct_s": 0.0}
    real_engine, real_plan, real_direct = fr._ENGINE, fr.Planner.plan, fr._direct

    class Engine:
        def run_backward(self, *args: Any) -> Any:
            t0 = time.thread_time()
            try:
                return real_engine.run_backward(*args)
            finally:
                acc["engine_s"] += time.thread_time() - t0
                acc["engine_calls"] += 1

    def plan(self: Any, *a: Any, **k: Any) -> Any:
        t0 = time.thread_time()
        try:
            return real_plan(self, *a, **k)
        finally:
            acc["plan_s"] += time.thread_time() - t0

    def direct(*a: Any) -> None:
        t0 = time.thread_time()
        try:
            real_direct(*a)
        finally:
            acc["direct_s"] += time.thread_time() - t0

    def input_path(_: Any) -> None:
        inp = x.detach().requires_grad_(True)
        out = parts[1](inp)
        Engine().run_backward((out,), (grad,), True, False, (inp,), True, False)

    samples: dict[str, list[dict[str, float]]] = {"BW": [], "B": [], "W": [], "input path": []}
    fused = stage_mod.Stage(parts[1], 1, STAGES, lm_loss, split=False)
    split = stage_mod.Stage(parts[1], 1, STAGES, lm_loss, split=True)
    fr._ENGINE = Engine()
    fr.Planner.plan = plan  # type: ignore[method-assign]
    fr._direct = direct
    try:
        for rep in range(reps + 3):
            for label, st, call in (("BW", fused, lambda st: st.backward(0, grad)),
                                    ("B", split, lambda st: st.backward_input(0, grad)),
                                    ("W", split, lambda st: st.backward_weight(0)),
                                    ("input path", None, input_path)):
                if st is not None and label != "W":
                    st.forward(0, x)
                acc.update(engine_s=0.0, engine_calls=0, plan_s=0.0, direct_s=0.0)
                if label == "input path":  # only its engine call is timed
                    call(st)
                    total = acc["engine_s"]
                else:
                    t0 = time.thread_time()
                    call(st)
                    total = time.thread_time() - t0
                if rep >= 3:
                    samples[label].append({"total": total, **acc})
    finally:
        fr._ENGINE = real_engine
        fr.Planner.plan = real_plan  # type: ignore[method-assign]
        fr._direct = real_direct
    parts[1].zero_grad(set_to_none=True)
    out = {}
    for label, rows in samples.items():
        total = statistics.median(r["total"] for r in rows) * 1e3
        eng = statistics.median(r["engine_s"] for r in rows) * 1e3
        pln = statistics.median(r["plan_s"] for r in rows) * 1e3
        dct = statistics.median(r["direct_s"] for r in rows) * 1e3
        out[label] = {"total_ms": total, "engine_ms": eng, "plan_ms": pln, "direct_ms": dct,
                      "other_ms": total - eng - pln - dct,
                      "engine_calls": statistics.median(r["engine_calls"] for r in rows)}
    return out


def floor(dim: int, heads: int, seq: int, mbs: int, reps: int = 30) -> dict[str, float]:
    """Each pass repeated on one block of stage 1 whose graph is built once and kept: warm
    caches, no planning, no graph building or freeing (CPU us, median of ``reps`` rounds of
    20). What the split costs where only its own work counts.

    ``bw``: the fused engine call; ``input_path``: the input gradient alone; ``b``: B's call
    (the input gradient and the captures); ``w``: W as the stage runs it
    (:class:`~pipeblocks.runtime.frontier.WeightPass`: the direct kernels, and one engine call
    per frontier level left, ``w_engine_calls``). ``ratio`` is (b + w) / bw.
    """
    import statistics
    import time

    import torch

    import pipeblocks.runtime.frontier as fr
    from pipeblocks.models.gpt import synthetic_batch

    torch.set_num_threads(1)
    cfg, parts = _parts(dim, heads, seq)
    tokens, _ = synthetic_batch(cfg, mbs)
    with torch.no_grad():
        x = parts[0](tokens)
    block = parts[1][0]
    params = tuple(block.parameters())
    inp = x.detach().requires_grad_(True)
    out = block(inp)
    grad = torch.full_like(out, 1e-3)
    plan = fr.Planner({id(q) for q in params}).plan(out, inp)
    run = fr._ENGINE.run_backward
    caps = run((out,), (grad,), True, False, (inp, *plan.edges), True, False)[1:]
    weight_pass = fr.WeightPass()
    calls = {
        "bw": lambda: run((out,), (grad,), True, False, (*params, inp), True, True),
        "input_path": lambda: run((out,), (grad,), True, False, (inp,), True, False),
        "b": lambda: run((out,), (grad,), True, False, (inp, *plan.edges), True, False),
        "w": lambda: weight_pass([plan], [caps]),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(reps):
        for key, call in calls.items():
            t0 = time.thread_time()
            for _ in range(20):
                call()
            times[key].append((time.thread_time() - t0) / 20 * 1e6)
    block.zero_grad(set_to_none=True)
    got = {k: statistics.median(v) for k, v in times.items()}
    got["w_engine_calls"] = float(len(plan.shape.levels) + len(plan.shape.pinned))
    got["ratio"] = (got["b"] + got["w"]) / got["bw"]
    return got


IDLE_MS = (0.0, 2.0, 5.0, 20.0)


def after_idle(dim: int, heads: int, seq: int, mbs: int, reps: int) -> list[dict[str, Any]]:
    """Stage 1's passes timed after sleeping 0, 2, 5, 20 ms (CPU clock): the note "idle" of
    :mod:`pipeblocks.runtime.profile`. In a pipeline a pass often follows a wait."""
    import torch

    from pipeblocks.models.gpt import lm_loss, synthetic_batch
    from pipeblocks.runtime.profile import profile_stages

    torch.set_num_threads(1)
    cfg, parts = _parts(dim, heads, seq)
    tokens, targets = synthetic_batch(cfg, mbs)
    with torch.no_grad():
        x = parts[0](tokens)
    out = []
    for rnd in range(2):  # two sweeps, so that a drift of the machine shows
        for idle in IDLE_MS:
            # stages 1.. of the model (stage 1 is the first of them: no input gradient
            # needed, as in the real stage; only its row is kept)
            prof = profile_stages(parts[1:], x, targets, lm_loss, reps=reps, warmup=2,
                                  clock="cpu", idle_ms=idle)
            s1 = prof.stages[0]
            out.append({"round": rnd, "idle_ms": idle, "f": s1.f, "b": s1.b, "w": s1.w,
                        "bw": s1.bw})
    return out


def run(quick: bool = False) -> dict[str, Any]:
    reps = 5 if quick else 30
    sizes = SIZES[:1] if quick else SIZES
    results = []
    for dim, heads, seq, mbs in sizes:
        c.log(f"split: dim {dim} seq {seq} microbatch {mbs}")
        results.append(measure(dim, heads, seq, mbs, reps))
    c.log("split: stage 1's backward taken apart (demo size)")
    profile = where_time_goes(*SIZES[0], reps=10 if quick else 50)
    c.log("split: each pass repeated on one block's graph")
    floors = [{"dim": d, "microbatch": b, **floor(d, h, q, b, reps=5 if quick else 30)}
              for d, h, q, b in sizes]
    c.log("split: passes after idling")
    idle = after_idle(*SIZES[0], reps=5 if quick else 15)
    result = {"target": TARGET, "reps": reps, "layers": 8, "stages": STAGES, "sizes": results,
              "profile": profile, "floor": floors, "after_idle": idle}
    c.write_result(NAME, result, quick)
    return result


def markdown(result: dict[str, Any], md_dir: Path = c.ROOT / "docs") -> str:
    lines = [
        "## The B/W split on real compute",
        "",
        f"(B + W) / BW of the small GPT ({result['layers']} blocks on {result['stages']} "
        f"stages, split as `pipeblocks train` splits it), per stage, from `profile_stages` with "
        f"the CPU clock (`time.thread_time`, one torch thread; median of {result['reps']}, split "
        f"and fused alternated). Target: <= {result['target']} on every stage.",
        "",
    ]
    head = ["dim", "seq", "microbatch", *(f"stage {s['stage']}" for s in
                                          result["sizes"][0]["stages"]), "all stages", "target"]
    rows = [[r["dim"], r["seq"], r["microbatch"], *(s["ratio"] for s in r["stages"]),
             r["total_ratio"], "met" if r["met"] else "**missed**"] for r in result["sizes"]]
    lines += [c.table(head, rows), ""]
    prof = result["profile"]
    bw, b, w = prof["BW"], prof["B"], prof["W"]
    extra = b["total_ms"] + w["total_ms"] - bw["total_ms"]
    lines += [
        "Where the split's time goes, stage 1 of the demo size (`bench_split.where_time_goes`: "
        "the autograd engine calls, W's own weight-gradient kernels (`runtime.direct`) and the "
        "frontier search wrapped with `thread_time` counters; median CPU ms per microbatch):",
        "",
        c.table(["pass", "total", "engine calls", "in the engine", "W's direct kernels",
                 "frontier search", "rest"],
                [[k, v["total_ms"], v["engine_calls"], v["engine_ms"], v.get("direct_ms", 0.0),
                  v["plan_ms"], v["other_ms"]] for k, v in prof.items()]),
        "",
        f"B + W costs {extra:.3f} ms more than BW.",
    ]
    inp = prof.get("input path")
    if inp:
        least_w = bw["engine_ms"] - inp["engine_ms"]
        lines[-1] += (
            f" B is {b['total_ms'] - inp['engine_ms']:.3f} ms over the input path alone: "
            f"{b['plan_ms']:.3f} ms in the frontier search (a Python walk of each graph), "
            f"{b['engine_ms'] - inp['engine_ms']:.3f} ms more in the engine (one call per "
            f"segment, the captures) and {b['other_ms']:.3f} ms of other Python. W is "
            f"{w['total_ms'] - least_w:.3f} ms over BW minus the input path (the least it "
            f"could cost): its kernels run apart from B's, on operands that have left the "
            f"cache, plus the Python around them.")
    lines += [
        "These are costs per block, not per FLOP, which is why the ratio falls as the blocks "
        "grow.",
        "",
    ]
    floors = result.get("floor")
    if floors:
        lines += [
            "Each pass repeated on one block's graph built once (`bench_split.floor`: warm "
            "caches, no frontier search, no graph building or freeing; median CPU µs): what "
            "the split costs where only its own work counts.",
            "",
            c.table(["dim", "microbatch", "BW", "input path", "B", "W", "W engine calls",
                     "(B + W) / BW"],
                    [[f["dim"], f["microbatch"], f["bw"], f["input_path"], f["b"], f["w"],
                      f["w_engine_calls"], f["ratio"]] for f in floors]),
            "",
        ]
    idle = result.get("after_idle")
    if idle:
        base = {r["round"]: r for r in idle if r["idle_ms"] == 0}
        lines += [
            "The same passes after the thread slept (stage 1 of the demo size, profiled as the "
            "first of stages 1-3, so its B has no input gradient to compute; "
            "`profile_stages(idle_ms=...)`, CPU clock, two sweeps; *x* is the F + B + W CPU "
            "time over the same sweep's back-to-back value). In a pipeline a pass often "
            "follows a wait, so back-to-back profiles are optimistic on a machine like this "
            "one:",
            "",
            c.table(["sweep", "idle ms", "F", "B", "W", "BW", "x"],
                    [[r["round"] + 1, r["idle_ms"], r["f"], r["b"], r["w"], r["bw"],
                      (r["f"] + r["b"] + r["w"]) / (base[r["round"]]["f"] + base[r["round"]]["b"]
                                                    + base[r["round"]]["w"])] for r in idle]),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the demo size, 5 reps")
    args = ap.parse_args(argv)
    result = run(args.quick)
    for r in result["sizes"]:
        print(f"dim {r['dim']} seq {r['seq']} microbatch {r['microbatch']}:")
        c.print_table(["stage", "F", "B", "W", "BW", "(B+W)/BW"],
                      [[s["stage"], s["f"], s["b"], s["w"], s["bw"], s["ratio"]]
                       for s in r["stages"]])
        print(f"all stages {r['total_ratio']:.3f} (target {TARGET}: "
              f"{'met' if r['met'] else 'MISSED'})")
    print("\none block, each pass repeated on its graph, CPU us:")
    c.print_table(["dim", "microbatch", "BW", "input path", "B", "W", "W engine calls",
                   "(B+W)/BW"],
                  [[f["dim"], f["microbatch"], f["bw"], f["input_path"], f["b"], f["w"],
                    f["w_engine_calls"], f["ratio"]] for f in result["floor"]])
    print("\nstage 1 of the demo size, CPU ms per microbatch:")
    c.print_table(["pass", "total", "engine calls", "engine", "direct W", "frontier search",
                   "rest"],
                  [[k, v["total_ms"], v["engine_calls"], v["engine_ms"], v["direct_ms"],
                    v["plan_ms"], v["other_ms"]] for k, v in result["profile"].items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
