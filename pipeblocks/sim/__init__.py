"""Simulation: cost models, the event engine, timelines, metrics and the deadlock check.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate, UniformCosts
    >>> simulate(generate("1f1b", 4, 8), UniformCosts(f=1, b=2, w=0)).makespan
    33.0

Modules: :mod:`~pipeblocks.sim.costs` (the protocol, uniform costs), :mod:`~.costs_file`
(per-stage JSON), :mod:`~.transformer` (FLOPs and bytes of a GPT), :mod:`~.memory` (presets),
:mod:`~.engine` (the timeline), :mod:`~.metrics` (bubble map, summary), :mod:`~.formulas`
(closed forms), :mod:`~.deadlock` (blocking-send check of lowered programs).
"""

from pipeblocks.sim.costs import (
    UNIT,
    CostModel,
    StageCosts,
    UniformCosts,
    describe_costs,
    memory_unit,
    one_f_one_b_peak,
)
from pipeblocks.sim.costs_file import PerStageCosts, load_costs, parse_costs
from pipeblocks.sim.deadlock import check as check_deadlock
from pipeblocks.sim.engine import Simulation, Span, simulate
from pipeblocks.sim.formulas import bubble_formula
from pipeblocks.sim.memory import (
    TransformerMemory,
    UnitMemory,
    WithMemory,
    memory_preset,
    with_memory,
)
from pipeblocks.sim.metrics import Bubble, BubbleKind, bubble_map, memory_at, summary
from pipeblocks.sim.transformer import Machine, TransformerCosts, TransformerModel

__all__ = [
    "CostModel",
    "UniformCosts",
    "StageCosts",
    "describe_costs",
    "UNIT",
    "memory_unit",
    "one_f_one_b_peak",
    "PerStageCosts",
    "load_costs",
    "parse_costs",
    "TransformerModel",
    "Machine",
    "TransformerCosts",
    "UnitMemory",
    "TransformerMemory",
    "WithMemory",
    "with_memory",
    "memory_preset",
    "Simulation",
    "Span",
    "simulate",
    "Bubble",
    "BubbleKind",
    "bubble_map",
    "memory_at",
    "summary",
    "bubble_formula",
    "check_deadlock",
]
