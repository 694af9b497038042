"""One rank of the offload runtime tests (started by pipeblocks.runtime.launch.launch).

``python offload_worker.py OUT``: for every registered generator at p=4, m=8, one step with
every eligible (stage, microbatch) offloaded; rank 0 writes the losses and every parameter's
gradient by global name to OUT (key: the generator's name).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from dist_worker import M, P, gather, run_one

from pipeblocks.generators import generate, names
from pipeblocks.ir.offload import with_offload
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
            s = with_offload(generate(n, P, M))
            assert s.offload is not None, n  # every generator has pairs to offload at m=8
            dist.barrier()
            results[n] = gather(run_one(s, rank, guard))
        if rank == 0:
            torch.save(results, out)
    except RankFailure as e:
        guard.report(str(e), linger=0.5)
    guard.stop()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
