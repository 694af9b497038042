"""One rank of the fault tests: train with checkpoints, then fail in a chosen pass.

``python fault_worker.py DIR MODE RANK STEP ACTION`` (started by
:func:`pipeblocks.runtime.launch.launch`): 1F1B on the launched ranks trains the small GPT and
saves a checkpoint in DIR after every step (:mod:`pipeblocks.runtime.checkpoint`, as
``pipeblocks train --save DIR --save-every 1`` does). In step STEP, rank RANK raises
(``raise``) or is SIGKILLed (``kill``) when it runs ACTION (e.g. ``1F2``: the F of stage 1 on
microbatch 2). tests/runtime/dist_worker.py injects the same faults without checkpoints.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from pipeblocks.generators import generate
from pipeblocks.ir.actions import Action
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime import checkpoint
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.faults import Guard, RankFailure
from pipeblocks.runtime.split import ends_layout, split

M, MBS = 4, 2


class Faulty(nn.Module):
    """Wraps a stage: once armed, its F of the chosen microbatch raises or kills the process."""

    def __init__(self, inner: nn.Module, mode: str, mb: int) -> None:
        super().__init__()
        self.inner, self.mode, self.mb, self.calls, self.armed = inner, mode, mb, 0, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed and self.calls == self.mb:  # F of microbatch k is the (k+1)-th forward
            if self.mode == "raise":
                raise RuntimeError("injected fault")
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls += 1
        return self.inner(x)


def main() -> int:
    folder, mode, bad_rank, bad_step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    action = Action.parse(sys.argv[5])
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    schedule = generate("1f1b", int(os.environ["WORLD_SIZE"]), M)
    S = schedule.spec.num_stages
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=S)
    layout = ends_layout(S, S)
    parts = split(TinyGPT(cfg, seed=3), S, layout)
    mine = {s: parts[s] for s in schedule.spec.stages_of(rank)}
    opt = torch.optim.Adam([p for m in mine.values() for p in m.parameters()], lr=1e-2)
    faulty = None
    if rank == bad_rank:  # the optimizer holds the inner parameters; the wrapper adds none
        faulty = mine[action.stage] = Faulty(mine[action.stage], mode, action.mb)
    dist.init_process_group("gloo")
    guard = Guard(rank, timeout=float(os.environ.get("PB_TEST_TIMEOUT", "30")))
    try:
        ex = Executor(schedule, mine, lm_loss, opt, guard=guard)
        for step in range(1, bad_step + 1):
            if faulty is not None:  # the first step's first forward is the shape handshake's
                faulty.armed, faulty.calls = step == bad_step, -1 if step == 1 else 0
            tokens, targets = synthetic_batch(cfg, M * MBS, seed=5, step=step)
            dist.barrier()
            ex.step(tokens, targets)
            stages = {s: getattr(m, "inner", m) for s, m in mine.items()}
            checkpoint.save(folder, step, stages, opt, layout=layout, model={"test": 1},
                            guard=guard)
        time.sleep(3600)  # not reached: the fault stops this rank; if not, the test fails
    except RankFailure as e:
        guard.report(str(e), linger=0.5)  # this rank's one line, then exit 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
