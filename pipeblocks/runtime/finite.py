"""Where a NaN or inf first appeared in a training step: the stage, its rank, and what.

The training loop (:mod:`pipeblocks.runtime.trainer`) calls these after each executor step, outside the
executor: :func:`watch_outputs` flags a stage whose output was not finite (a forward hook, read
once per step), :func:`first_bad` turns this rank's flags, losses and gradients into one key in
the order values are made, and the smallest key over all ranks (one all-reduce) names the
origin, which :func:`non_finite_error` describes.

    >>> import torch
    >>> stages = {0: torch.nn.Linear(2, 2), 1: torch.nn.Linear(2, 2)}
    >>> flags = watch_outputs(stages, torch.device("cpu"))
    >>> _ = stages[1](torch.full((1, 2), float("inf")))
    >>> key = first_bad(stages, flags, None, 2)
    >>> key, str(non_finite_error(key, 3, 2, stage_rank=lambda s: 0, lr=0.1, save=None,
    ...                           losses=[]))
    (1, 'step 3: the output of stage 1 (rank 0) is not finite (NaN or inf), the first such value of the step; the run stops without saving this state; lower --lr (now 0.1) or check the data')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from pipeblocks.errors import PipeblocksError

__all__ = ["NonFiniteError", "watch_outputs", "first_bad", "non_finite_error", "none"]


class NonFiniteError(PipeblocksError):
    """A loss, output or gradient became NaN or infinite; names the step, rank and stage.

    ``details`` holds the same as a dict (``step``, ``rank``, ``stage``, ``what``, ``loss``)."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


def none(num_stages: int) -> int:
    """The key of a step whose values are all finite."""
    return 3 * num_stages


def watch_outputs(stages: Mapping[int, torch.nn.Module],
                  device: torch.device) -> dict[int, torch.Tensor]:
    """A flag per stage, set when its output holds a NaN or inf; no sync until read. The hook
    sits on the stage's last part, not the stage: a hook there would stop the stage from
    running its parts one by one (runtime.stage, note "segments")."""
    flags = {}
    for s, mod in stages.items():
        flag = flags[s] = torch.zeros((), dtype=torch.bool, device=device)
        last = mod[-1] if isinstance(mod, torch.nn.Sequential) and len(mod) > 1 else mod

        def hook(_m: Any, _i: Any, out: Any, flag: torch.Tensor = flag) -> None:
            # no_grad: isfinite decomposes into abs() etc., which would save the output for a
            # backward that never comes (and count in --memory's saved bytes)
            with torch.no_grad():
                for t in _leaves(out):  # a tensor, or a tuple / dict of them (runtime.tree)
                    if t.is_floating_point():
                        flag.logical_or_(~torch.isfinite(t).all())

        last.register_forward_hook(hook)
    return flags


def _leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _leaves(v)]
    return []


def first_bad(stages: Mapping[int, torch.nn.Module], flags: Mapping[int, torch.Tensor],
              losses: tuple[float, ...] | None, num_stages: int) -> int:
    """This rank's first non-finite value of the step, in the order values are made: stage
    s's output is key s (forward), the loss S, stage s's gradient 2S - s (backward runs from
    the last stage down); :func:`none` (3S) when all are finite. Clears the flags."""
    S = num_stages
    keys = [s for s, flag in flags.items() if bool(flag)]
    if losses is not None and not all(math.isfinite(x) for x in losses):
        keys.append(S)
    for s, mod in stages.items():
        # a sharded gradient (FSDP2, tensor parallel) is checked by its local part: the
        # ranks' keys meet in the trainer's all-reduce (MAX) anyway
        grads = [_local(p.grad) for p in mod.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            keys.append(2 * S - s)
    for flag in flags.values():
        flag.zero_()
    return min(keys, default=none(S))


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def non_finite_error(key: int, step: int, num_stages: int, *, stage_rank: Callable[[int], int],
                     lr: float, save: str | None, losses: list[float | None]) -> NonFiniteError:
    """The error for ``key``, the smallest :func:`first_bad` over ranks, after ``step``."""
    S = num_stages
    stage, what = (key, "output") if key < S else (S - 1, "loss") if key == S else \
        (2 * S - key, "gradient")
    rank = stage_rank(stage)
    kept = f" (earlier checkpoints stay in {save})" if save else ""
    message = (f"step {step}: the {what} of stage {stage} (rank {rank}) is not finite (NaN or "
               f"inf), the first such value of the step; the run stops without saving this "
               f"state{kept}; lower --lr (now {lr:g}) or check the data")
    return NonFiniteError(message, {"step": step, "rank": rank, "stage": stage, "what": what,
                                    "loss": losses})
