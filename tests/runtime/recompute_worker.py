"""One rank of the recompute runtime tests (started by pipeblocks.runtime.launch.launch).

``python recompute_worker.py OUT``: for every registered generator at p=4, m=8, one step with
every stage recomputed, and one with the even stages only; rank 0 writes the losses and every
parameter's gradient by global name to OUT (keys ``NAME-r`` and ``NAME-r-even``).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from dist_worker import M, P, gather, run_one

from pipeblocks.generators import generate, names
from pipeblocks.ir.recompute import with_recompute
from pipeblocks.runtime.faults import Guard, RankFailure


def main() -> int:
    out = sys.argv[1]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    guard = Guard(rank, timeout=float(os.environ.get("PB_TEST_TIMEOUT", "60")))
    try:
        results = {}
        for n in names():
            s = generate(n, P, M)
            even = [st for st in range(s.spec.num_stages) if st % 2 == 0]
            for label, r in ((f"{n}-r", with_recompute(s)),
                             (f"{n}-r-even", with_recompute(s, even))):
                dist.barrier()
                losses, grads = run_one(r, rank, guard)
                results[label] = gather((losses, grads))
        if rank == 0:
            torch.save(results, out)
    except RankFailure as e:
        guard.report(str(e), linger=0.5)
    guard.stop()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
