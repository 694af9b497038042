"""Memory budgets: a fraction of 1F1B's peak, or an amount in the cost model's memory unit.

A :class:`Budget` says how much activation memory any one rank may hold at its peak:

- ``Budget.fraction(0.5)``: half of what 1F1B holds for the same model on the same p ranks
  (:attr:`pipeblocks.sim.Simulation.peak_fraction` <= 0.5);
- ``Budget.memory(3e10)``: at most that much in the cost model's memory unit (bytes for the
  transformer preset or a costs file that says so; stage-activations otherwise).

Each placement has its own 1F1B reference (:func:`pipeblocks.sim.one_f_one_b_peak`), so one
fraction becomes one limit per spec (:meth:`Budget.limit`).

    >>> from pipeblocks.ir import PipelineSpec
    >>> from pipeblocks.sim import UNIT
    >>> from pipeblocks.sim.tables import tables
    >>> Budget.fraction(0.5).limit(tables(PipelineSpec(8, 32, 2, "v"), UNIT))   # of 16 chunks
    8.0
    >>> Budget.fraction(0.5).describe(), Budget.memory(3e10).describe()
    ('0.5 x 1F1B peak', '3e+10 (memory unit)')
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pipeblocks.errors import SpecError
from pipeblocks.sim.tables import Tables

__all__ = ["BudgetKind", "Budget", "EPS"]

EPS = 1e-9
"""Relative tolerance when comparing a peak with a limit (float sums of stage memories)."""


class BudgetKind(enum.Enum):
    """What a budget's value counts."""

    FRACTION = "fraction"  # of 1F1B's peak for the same model and p
    MEMORY = "memory"  # in the cost model's memory unit


@dataclass(frozen=True, slots=True)
class Budget:
    """The most activation memory a rank may hold: ``value`` of ``kind``."""

    value: float
    kind: BudgetKind = BudgetKind.FRACTION

    def __post_init__(self) -> None:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            what = "fraction of 1F1B's peak" if self.kind is BudgetKind.FRACTION else "memory"
            raise SpecError(f"the memory budget ({what}) must be a finite number > 0 (got "
                            f"{v!r}); e.g. 0.5 for half of 1F1B's activation memory")
        object.__setattr__(self, "value", float(v))

    @classmethod
    def fraction(cls, value: float) -> Budget:
        """At most ``value`` times 1F1B's peak."""
        return cls(value, BudgetKind.FRACTION)

    @classmethod
    def memory(cls, value: float) -> Budget:
        """At most ``value`` in the cost model's memory unit."""
        return cls(value, BudgetKind.MEMORY)

    def limit(self, tab: Tables) -> float:
        """The most a rank of ``tab.spec`` may hold, in the cost model's memory unit."""
        if self.kind is BudgetKind.FRACTION:
            return self.value * tab.reference
        return self.value

    def fits(self, peak: float, tab: Tables) -> bool:
        """Whether a rank peak of ``peak`` keeps this budget on ``tab.spec``."""
        limit = self.limit(tab)
        return peak <= limit + EPS * max(1.0, abs(limit))

    def describe(self) -> str:
        if self.kind is BudgetKind.FRACTION:
            return f"{self.value:g} x 1F1B peak"
        return f"{self.value:g} (memory unit)"
