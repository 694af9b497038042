"""The runtime: run any pipeblocks schedule on torch.distributed (the only layer with torch).

- :class:`Stage`: one stage's F, B, W and BW per microbatch (the B/W split, with a fallback).
- :class:`Executor`: walks one rank's lowered program; P2P, the V turn, loss scaling.
- :func:`launch`: start P local rank processes (the store host, faults never hang).
- :class:`Guard` / :class:`RankFailure`: the per-rank watchdog and the error it raises.
- :class:`EmulatedStage`: passes that sleep a fixed time (measure overhead vs the simulator).
- :func:`~pipeblocks.runtime.profile.profile_stages`: per-stage F, B, W, BW times and memory.
- :func:`~pipeblocks.runtime.split.split`: a sequence of layers into stages (``even_layout``,
  ``ends_layout``).

See docs/runtime.md.

    >>> import torch, pipeblocks as pb
    >>> ex = Executor(pb.generate("gpipe", 1, 2), {0: torch.nn.Linear(2, 2)},
    ...               torch.nn.functional.mse_loss, None, rank=0)
    >>> ex.step(torch.ones(4, 2), torch.zeros(4, 2)).losses is not None
    True
"""

from pipeblocks.runtime.emulate import EmulatedStage
from pipeblocks.runtime.executor import Executor, StageRunner, StepResult, check_stages
from pipeblocks.runtime.faults import Guard, RankFailure
from pipeblocks.runtime.launch import LaunchResult, launch
from pipeblocks.runtime.stage import Stage, shared_parameters

__all__ = [
    "EmulatedStage",
    "Executor",
    "Guard",
    "LaunchResult",
    "RankFailure",
    "Stage",
    "StageRunner",
    "StepResult",
    "check_stages",
    "launch",
    "shared_parameters",
]
