"""One rank of the distributed runtime tests (started by pipeblocks.runtime.launch.launch).

``python dist_worker.py MODE OUT [ARGS]``; rank 0 writes what the test checks to OUT:

- ``schedules OUT CSV``: for every registered generator at p=4, m=8 (and the CSV file), one
  step without optimizer; the losses and every parameter's gradient by global name. Then,
  under the key ``train``, twelve Adam steps of v-half: the losses of each step.
- ``raise OUT RANK ACTION`` / ``kill OUT RANK ACTION`` / ``hang OUT RANK ACTION``: rank RANK
  raises, is killed (SIGKILL) or hangs when it runs ACTION (e.g. 2F3) of 1f1b.
- ``mismatch OUT``: every rank hands the executor one stage too few.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from pipeblocks.generators import generate, names
from pipeblocks.ir.actions import Action
from pipeblocks.ir.schedule import Schedule
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.faults import Guard, RankFailure
from pipeblocks.runtime.split import ends_layout, split

P, M, MBS = 4, 8, 2


def config(num_stages: int) -> GPTConfig:
    """The test model: one block per stage."""
    return GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=num_stages)


def build(schedule: Schedule, rank: int) -> tuple[TinyGPT, dict[int, nn.Module]]:
    S = schedule.spec.num_stages
    model = TinyGPT(config(S), seed=3)
    parts = split(model, S, ends_layout(S, S))
    return model, {s: parts[s] for s in schedule.spec.stages_of(rank)}


def run_one(schedule: Schedule, rank: int, guard: Guard, steps: int = 1, lr: float = 0.0):
    model, mine = build(schedule, rank)
    opt = torch.optim.Adam([p for m in mine.values() for p in m.parameters()], lr=lr) if lr else None
    ex = Executor(schedule, mine, lm_loss, opt, guard=guard)
    losses = []
    for step in range(steps):
        tokens, targets = synthetic_batch(config(schedule.spec.num_stages), M * MBS, seed=5,
                                          step=step if lr else 0)
        res = ex.step(tokens, targets)
        losses.append(res.losses)
    names_of = {id(p): n for n, p in model.named_parameters()}
    grads = {names_of[id(p)]: p.grad.clone() for m in mine.values() for p in m.parameters()
             if p.grad is not None}
    return losses, grads


def gather(obj):
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


class Faulty(nn.Module):
    """Wraps a stage; at the chosen (pass, microbatch) it raises, kills its process, or hangs."""

    def __init__(self, inner: nn.Module, mode: str, action: Action) -> None:
        super().__init__()
        self.inner, self.mode, self.action, self.calls = inner, mode, action, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        # the shape handshake runs the first forward: F of microbatch k is the (k+2)-th
        if self.calls == self.action.mb + 2:
            if self.mode == "raise":
                raise RuntimeError("injected fault")
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return self.inner(x)


def main() -> int:
    mode, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if mode == "mismatch":
        s = generate("1f1b", int(os.environ["WORLD_SIZE"]), M)
        _, mine = build(s, rank)
        try:  # refused in the constructor: no process group exists yet
            Executor(s, {**mine, 99: nn.Identity()}, lm_loss, None, rank=rank)
        except ValueError as e:
            print(f"refused: {e}", file=sys.stderr)
            return 2
        return 0
    dist.init_process_group("gloo")
    guard = Guard(rank, timeout=float(os.environ.get("PB_TEST_TIMEOUT", "60")))
    try:
        if mode == "schedules":
            results = {}
            todo = [(n, generate(n, P, M)) for n in names()]
            from pipeblocks.ir.formats import load

            todo.append(("csv", load(sys.argv[3])))
            for label, s in todo:
                dist.barrier()  # executors one after another: no message of one meets another
                losses, grads = run_one(s, rank, guard)
                results[label] = gather((losses, grads))
            dist.barrier()
            losses, _ = run_one(generate("v-half", P, M), rank, guard, steps=12, lr=1e-2)
            results["train"] = gather(losses)
            if rank == 0:
                torch.save(results, out)
        else:
            s = generate("1f1b", P, M)
            bad_rank, action = int(sys.argv[3]), Action.parse(sys.argv[4])
            model, mine = build(s, rank)
            if rank == bad_rank:
                mine[action.stage] = Faulty(mine[action.stage], mode, action)
            ex = Executor(s, mine, lm_loss, None, guard=guard)
            tokens, targets = synthetic_batch(config(P), M * MBS, seed=5)
            ex.step(tokens, targets)
            time.sleep(3600)  # a rank that is not stopped by the fault hangs here: the test fails
    except RankFailure as e:
        guard.report(str(e), linger=0.5)  # this rank's one line, then exit 1
    guard.stop()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
