"""One rank of the fill tests (started by pipeblocks.runtime.launch.launch).

``python fill_worker.py MODE OUT``; rank 0 writes what the test checks to OUT (JSON):

- ``emulated``: 1f1b, p=2, m=4, 20 ms emulated passes; two steps. Rank 0: a queue of 5 ms
  tasks with one that raises in the middle and one longer than every gap; rank 1: one that
  needs more memory than its 1 MiB headroom, then (second step) a queue for its lead and tail
  waits. Reports each rank's fill report, the tasks that ran and where.
- ``grads``: the test GPT, 1f1b, p=2, m=4, one step without fill and one (fresh executor) with
  fill tasks that train a second small model; the losses and gradients of both, rank 0's.
- ``eval``: the test GPT under 1f1b and v-min (p=2, m=4, no optimizer), three eval
  microbatches as fill (EvalFill), two steps, then drain: the eval losses, the training losses.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque

import torch
import torch.distributed as dist

from pipeblocks.generators import generate
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.emulate import EmulatedStage, emulated_sleep
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.fill import FillRunner, FillWork, second_model_work
from pipeblocks.runtime.fill_eval import EvalFill
from pipeblocks.runtime.fill_memory import Headroom
from pipeblocks.runtime.split import ends_layout, split
from pipeblocks.sim import UniformCosts, simulate
from pipeblocks.sim.fill import place_fill

P, M, MS = 2, 4, 20.0


def _runner(schedule, rank, tasks, spu, headroom=None):
    sim = simulate(schedule, UniformCosts(f=1, b=1, w=1))
    slots = place_fill(sim, [], edges=True).slots[rank]  # lead, between passes, tail
    return FillRunner(schedule, rank, slots, tasks, seconds_per_unit=spu, max_delay=0.001,
                      headroom=headroom)


def emulated(rank: int) -> dict:
    schedule = generate("1f1b", P, M)
    stages = {s: EmulatedStage(s, P, MS, (2, 4)) for s in schedule.spec.stages_of(rank)}
    ran: list[int] = []

    def ok(i: int) -> FillWork:
        return FillWork(lambda: (emulated_sleep(0.005), ran.append(i)), 0.005, name=f"ok{i}")

    def boom() -> None:
        raise RuntimeError("fill task failed on purpose")

    tasks = [ok(0), FillWork(lambda: None, 5.0, name="huge"), ok(1), ok(2),
             FillWork(boom, 0.005, name="boom"), ok(3), ok(4)]
    headroom = None
    if rank == 1:  # a lead and a tail wait (rank 0 has neither); a task over the headroom
        tasks = [ok(0), FillWork(lambda: ran.append(-1), 0.005, memory=2**30, name="big"), ok(1)]
        headroom = Headroom("cpu", limit=2**20)
    runner = _runner(schedule, rank, tasks, MS / 1000, headroom)
    ex = Executor(schedule, stages, None, None, rank=rank, fill=runner)
    ex.step(torch.zeros(M * 2, 4))
    if rank == 1:  # the big task waited for memory all step long; now a queue that fits
        runner.queue = deque(ok(i) for i in range(10, 40))
    ex.step(torch.zeros(M * 2, 4))
    spans = [(s.start, s.end) for s in runner.spans]
    return {**runner.report(), "ran": ran, "steps": ex.steps, "spans": spans}


def grads(rank: int) -> dict:
    schedule = generate("1f1b", P, M)
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=P)
    tokens, targets = synthetic_batch(cfg, M * 2, seed=5, step=0)
    out = {}
    for use_fill in (False, True):
        parts = split(TinyGPT(cfg, seed=3), P, ends_layout(P, P))
        mine = {s: parts[s] for s in schedule.spec.stages_of(rank)}
        runner = None
        if use_fill:
            side = torch.nn.Linear(8, 8)
            opt = torch.optim.SGD(side.parameters(), lr=0.1)
            work = second_model_work(side, opt, lambda: (torch.ones(4, 8), torch.zeros(4, 8)),
                                     torch.nn.functional.mse_loss, seconds=1e-4)
            # a huge seconds_per_unit: every gap looks long, so the tasks do run
            runner = _runner(schedule, rank, [work] * 50, 1.0)
        ex = Executor(schedule, mine, lm_loss, None, rank=rank, fill=runner)
        res = ex.step(tokens, targets)
        key = "fill" if use_fill else "plain"
        out[key] = {"losses": res.losses,
                    "grads": [p.grad.flatten().tolist() for m in mine.values()
                              for p in m.parameters()]}
        if runner is not None:
            out["report"] = runner.report()
    return out


def _store():
    from pipeblocks.runtime.faults import store_client

    return store_client(30.0)


def evaluation(rank: int) -> dict:
    out = {}
    for name in ("1f1b", "v-min", "v-min+adam"):
        schedule = generate(name.split("+")[0], P, M)
        S = schedule.spec.num_stages
        cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=S)
        parts = split(TinyGPT(cfg, seed=3), S, ends_layout(S, S))
        mine = {s: parts[s] for s in schedule.spec.stages_of(rank)}
        opt = torch.optim.Adam([q for m in mine.values() for q in m.parameters()], lr=0.05
                               ) if "adam" in name else None
        ex = Executor(schedule, mine, lm_loss, opt, rank=rank)
        batches = [synthetic_batch(cfg, 2, seed=11, step=e) for e in range(3)]
        ev = EvalFill(ex, batches, seconds=1e-4, per_step=2, store=_store(), name=name)
        ex.fill = _runner(schedule, rank, ev.tasks(), 1.0)
        ex.fill.at_end = ev.end_step
        tokens, targets = synthetic_batch(cfg, M * 2, seed=5, step=0)
        train = [ex.step(tokens, targets).losses for _ in range(2)]
        in_gaps = ex.fill.report()["fill_tasks_done"]
        done_in_steps = sum(ev.next.values())  # eval passes done before the drain
        out[name] = {"eval": ev.drain(), "train": train, "in_gaps": in_gaps,
                     "in_steps": done_in_steps}
    return out


def main() -> int:
    mode, path = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {"emulated": emulated, "grads": grads, "eval": evaluation}[mode](rank)
    got = [None] * P
    dist.all_gather_object(got, result)
    if rank == 0:
        with open(path, "w") as f:
            json.dump(got, f)
    dist.barrier()  # no rank leaves (closing its gloo pairs) while another is still in a collective
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
