"""The small GPT profiled stage by stage: what ``pipeblocks profile`` and ``timing`` measure.

The generic measurement is :func:`pipeblocks.runtime.profile.profile_stages` (any stages, any
loss); this module only builds the small GPT, splits it as ``pipeblocks train`` does and hands
it a microbatch.

    >>> from pipeblocks.models.gpt import GPTConfig
    >>> cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=2)
    >>> prof = profile_small_gpt(cfg, (2, 2), microbatch=2, reps=2, warmup=1, clock="cpu",
    ...                          device="cpu", input_path=True)
    >>> [s.stage for s in prof.stages], all(s.bw > 0 and s.b + s.w > 0 for s in prof.stages)
    ([0, 1], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from pipeblocks.errors import SpecError
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.profile import Clock, Profile, profile_stages
from pipeblocks.runtime.split import split

__all__ = ["profile_small_gpt"]


def profile_small_gpt(
    cfg: GPTConfig,
    layout: Sequence[int],
    *,
    microbatch: int,
    seed: int = 0,
    reps: int = 10,
    warmup: int = 2,
    clock: Clock = "wall",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    threads: int = 1,
    comm_ms: float = 0.0,
    idle_ms: float = 0.0,
    direct: bool = True,
    input_path: bool = False,
) -> Profile:
    """:func:`profile_stages` of the small GPT split by ``layout`` (parts per stage, as
    ``pipeblocks train`` splits it) on ``device`` ("auto": CUDA when there is one)."""
    cuda_ok = torch.cuda.is_available()
    if device == "cuda" and not cuda_ok:
        raise SpecError("--device cuda but CUDA is not available; use --device cpu")
    where = torch.device("cuda" if device == "cuda" or (device == "auto" and cuda_ok) else "cpu")
    if clock == "cpu" and where.type != "cpu":
        raise SpecError("--clock cpu misses GPU work; use --device cpu or --clock wall")
    torch.set_num_threads(threads)
    stages = split(TinyGPT(cfg, seed=seed), len(layout), layout)
    for st in stages:
        st.to(where)
    tokens, targets = synthetic_batch(cfg, microbatch, seed=seed)
    return profile_stages(stages, tokens.to(where), targets.to(where), lm_loss, reps=reps,
                          warmup=warmup, clock=clock, comm_ms=comm_ms, idle_ms=idle_ms,
                          direct=direct, input_path=input_path)
