"""``--tp T``: tensor parallel per pipeline stage for ``pipeblocks train``.

    $ pipeblocks train --schedule zb-h1 --ranks 4 --tp 2 --microbatches 4 --check-grads --json
    $ pipeblocks train --schedule v-min --ranks 8 --dp 2 --tp 2 --dp-mode fsdp --microbatches 4

The mesh is dp x pp x tp (pp = ranks / (dp * tp)); each stage's layers with a plan
(:data:`pipeblocks.runtime.tensor_parallel.PLANS`) are sharded over its tp group. docs/hybrid.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeblocks.errors import SpecError

__all__ = ["add_tp_arg", "check_tp"]


def add_tp_arg(parser: argparse.ArgumentParser) -> None:
    """--tp T (default 1)."""
    from pipeblocks.cli.common import positive_int

    parser.add_argument("--tp", type=positive_int, default=1, metavar="T",
                        help="tensor-parallel degree of each stage (DTensor plans for the "
                        "small GPT and HF Llama); pipeline ranks = ranks / (D * T) (default 1, "
                        "docs/hybrid.md)")


def check_tp(args: argparse.Namespace, plan: Any) -> None:
    """Refuse --tp where it cannot run, before any process starts: with emulated passes or
    ``--fill``, or on a model whose layers have no plan or whose heads or widths ``tp`` does
    not divide."""
    tp = getattr(args, "tp", 1)
    if tp == 1:
        return
    if args.emulate_ms is not None:
        raise SpecError(f"--tp {tp} shards real layers; emulated passes (--emulate-ms) have "
                        f"none: drop --tp or --emulate-ms")
    if getattr(args, "fill", None) is not None:
        raise SpecError(f"--fill with --tp {tp} is not built (its passes in the gaps would "
                        f"make tensor-parallel collectives); drop --fill or --tp")
    from pipeblocks.runtime.tensor_parallel import check_model

    check_model(plan.model, tp)
