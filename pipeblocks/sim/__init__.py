"""Simulation: cost models, the event engine, timelines and metrics.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate, UniformCosts
    >>> simulate(generate("1f1b", 4, 8), UniformCosts(f=1, b=2, w=0)).makespan
    33.0
"""

from pipeblocks.sim.costs import UNIT, CostModel, UniformCosts
from pipeblocks.sim.engine import Simulation, Span, simulate

__all__ = ["CostModel", "UniformCosts", "UNIT", "Simulation", "Span", "simulate"]
