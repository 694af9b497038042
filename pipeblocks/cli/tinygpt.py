"""The small GPT's options for ``pipeblocks train`` and ``profile``: its sizes and its layout.

``--layout N,N,...`` gives the blocks per stage (the embedding joins stage 0, the head the last
stage); ``--layout auto`` asks the planner's partition for them; the default spreads the blocks
evenly. Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from pipeblocks.errors import SpecError
from pipeblocks.ir.spec import PipelineSpec

if TYPE_CHECKING:
    from pipeblocks.models.gpt import GPTConfig

__all__ = ["model_config", "layout_of", "auto_layout"]


def model_config(args: argparse.Namespace, num_stages: int) -> GPTConfig:
    """The small GPT's sizes; by default the smallest multiple of the stage count >= 8 blocks."""
    from pipeblocks.models.gpt import GPTConfig

    layers = args.layers or num_stages * math.ceil(8 / num_stages)
    if args.dim % args.heads:
        raise SpecError(f"--dim must be a multiple of --heads (got {args.dim} and {args.heads})")
    return GPTConfig(vocab=args.vocab, seq=args.seq, dim=args.dim, heads=args.heads,
                     layers=layers)


def layout_of(args: argparse.Namespace, cfg: GPTConfig, num_stages: int,
              spec: PipelineSpec | None = None) -> tuple[int, ...]:
    """Parts per stage: ``--layout`` blocks (plus embedding and head), ``--layout auto`` (the
    planner's partition for ``spec``'s placement), or an even spread."""
    from pipeblocks.runtime.split import ends_layout

    if args.layout is None:
        return ends_layout(cfg.layers, num_stages)
    if args.layout == "auto":
        return auto_layout(cfg, spec or PipelineSpec(num_stages, 1))
    try:
        blocks = [int(x) for x in args.layout.split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"--layout {args.layout!r} is not a comma-separated list of integers") from None
    if len(blocks) != num_stages:
        raise SpecError(
            f"--layout gives {len(blocks)} stages but the schedule has {num_stages} "
            f"(p * v); give {num_stages} block counts"
        )
    if sum(blocks) != cfg.layers or min(blocks) < 0:
        raise SpecError(f"--layout {args.layout} must be >= 0 per stage and sum to the "
                        f"{cfg.layers} blocks (--layers)")
    counts = list(blocks)
    counts[0] += 1  # the embedding
    counts[-1] += 1  # the head (and the loss)
    return tuple(counts)


def auto_layout(cfg: GPTConfig, spec: PipelineSpec) -> tuple[int, ...]:
    """The small GPT's parts per stage that balance the ranks' time per microbatch, each block
    costing its F + B + W FLOPs and the last stage also the head's (the output layer over the
    vocabulary; the embedding is a lookup, free): :func:`pipeblocks.planner.partition`."""
    from pipeblocks.planner.model import ModelSpec
    from pipeblocks.planner.partition import partition

    model = ModelSpec(layers=cfg.layers, hidden=cfg.dim, heads=cfg.heads, seq=cfg.seq,
                      vocab=cfg.vocab)
    head = 3 * model.head_flops(cfg.seq)  # F + B + W of the output layer
    blocks = partition(cfg.layers, spec.num_ranks, stages_per_rank=spec.stages_per_rank,
                       placement=spec.placement, layer=sum(model.layer_flops(cfg.seq)),
                       extra={spec.num_stages - 1: head})
    counts = list(blocks)
    counts[0] += 1  # the embedding
    counts[-1] += 1  # the head (and the loss)
    return tuple(counts)
