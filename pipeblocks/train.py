"""``python -m pipeblocks.train``: one pipeline rank, what torchrun and ``pipeblocks train``
start. A shim: the options and the report are :mod:`pipeblocks.cli.train`'s, the per-rank
program is :mod:`pipeblocks.runtime.trainer`'s.

    $ torchrun --nproc-per-node 4 -m pipeblocks.train --schedule 1f1b --microbatches 8
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # no torch: one line naming the extra and exit 1, not a traceback
    from pipeblocks.cli.common import require_or_exit

    require_or_exit("torch", "python -m pipeblocks.train")

from pipeblocks.cli.train import rank_main as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
