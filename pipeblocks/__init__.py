"""pipeblocks: design, check, simulate, draw, search and run pipeline-parallel schedules.

    >>> import pipeblocks as pb
    >>> s = pb.generate("1f1b", num_ranks=4, num_microbatches=8)
    >>> pb.validate(s)
    >>> pb.simulate(s).bubble_rate == 3 / 11
    True
"""

from pipeblocks.errors import (
    ArgTypeError,
    CollisionError,
    DeadlockError,
    FormatError,
    MissingDependencyError,
    PipeblocksError,
    ScheduleError,
    SpecError,
)
from pipeblocks.generators import generate, get, names
from pipeblocks.ir import Action, Pass, PipelineSpec, Placement, Schedule, validate
from pipeblocks.planner import plan
from pipeblocks.sim import Simulation, UniformCosts, simulate

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ArgTypeError",
    "CollisionError",
    "DeadlockError",
    "FormatError",
    "MissingDependencyError",
    "Pass",
    "PipeblocksError",
    "PipelineSpec",
    "Placement",
    "Schedule",
    "ScheduleError",
    "Simulation",
    "SpecError",
    "UniformCosts",
    "generate",
    "get",
    "names",
    "plan",
    "simulate",
    "validate",
]
