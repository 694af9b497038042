"""Several tensors per transfer: measured / simulated step time of emulated passes (issue 16).

Four gloo ranks, every pass sleeps 20 ms (BW 40 ms), m = 8; each activation travels with 0 or
3 extra tensors (integer and boolean, no gradient: a mask, position ids), packed into one
message per transfer. The simulator gets the measured one-way time of the activation. Target:
measured / simulated <= 1.05 with the extra tensors.

    $ .venv/bin/python benchmarks/bench_transfer.py          # table + results/transfer.json
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

NAME = "transfer"
P, M, PASS_MS = 4, 8, 20.0
SHAPE = (4, 32, 64)  # microbatch x sequence x width, float32
SCHEDULES = ("1f1b", "v-half")
EXTRAS = (0, 3)
TARGET = 1.05


def worker(cfg: dict[str, Any]) -> int:
    """One rank: ``steps`` emulated steps; rank 0 writes the step times and the simulation."""
    import torch
    import torch.distributed as dist

    import pipeblocks as pb
    from pipeblocks.runtime.emulate import EmulatedStage
    from pipeblocks.runtime.executor import Executor
    from pipeblocks.runtime.p2p import one_way_ms
    from pipeblocks.sim import UniformCosts, simulate

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    s = pb.generate(cfg["schedule"], P, M)
    comm = one_way_ms(SHAPE)
    runners = {st: EmulatedStage(st, s.spec.num_stages, PASS_MS, SHAPE, extra=cfg["extra"])
               for st in s.spec.stages_of(rank)}
    ex = Executor(s, runners, None, None)
    x = torch.zeros(M * SHAPE[0], *SHAPE[1:])
    ms = []
    for _ in range(cfg["steps"]):
        dist.barrier()
        r = ex.step(x, None)
        t = torch.tensor([-r.start, r.end], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        ms.append(float(t.sum()) * 1e3)
    if rank == 0:
        v = s.spec.stages_per_rank
        sim = simulate(s, UniformCosts(f=PASS_MS * v, b=PASS_MS * v, w=PASS_MS * v, comm=comm))
        Path(cfg["out"]).write_text(json.dumps(
            {"step_ms": ms, "simulated_ms": sim.makespan, "comm_ms": comm}))
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 steps per case, not 8")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    from pipeblocks.runtime.launch import launch

    load = c.load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCHEDULES:
            for extra in EXTRAS:
                c.log(f"transfer: {name} with {extra} extra tensors")
                out = Path(tmp) / f"{name}-{extra}.json"
                cfg = {"schedule": name, "extra": extra, "steps": 3 if args.quick else 8,
                       "out": str(out)}
                res = launch([c.PYTHON, __file__, "--worker", json.dumps(cfg)], P,
                             capture=True, deadline=600)
                if res.codes != (0,) * P:
                    raise SystemExit(f"{name}: ranks failed {res.codes}: {res.fault}")
                got = json.loads(out.read_text())
                med = statistics.median(got["step_ms"][1:])  # the first step warms up
                rows.append({"schedule": name, "extra_tensors": extra, "measured_ms": med,
                             "simulated_ms": got["simulated_ms"], "comm_ms": got["comm_ms"],
                             "measured_over_simulated": med / got["simulated_ms"]})
    c.print_table(["schedule", "extra tensors", "measured ms", "simulated ms", "ratio", "ok"],
                  [[r["schedule"], r["extra_tensors"], round(r["measured_ms"], 1),
                    round(r["simulated_ms"], 1), round(r["measured_over_simulated"], 4),
                    r["measured_over_simulated"] <= TARGET] for r in rows])
    print(f"load average at the start: {load:.2f} (1 min); target: ratio <= {TARGET}")
    c.write_result(NAME, {"load_average": load, "rows": rows}, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
