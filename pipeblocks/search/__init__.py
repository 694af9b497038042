"""Memory-limited search: the fastest schedule under any memory budget, and the Pareto front.

Modules: :mod:`~pipeblocks.search.engine` (:func:`search`, :class:`Searcher`),
:mod:`~.candidates` (where candidates come from, how they are ranked), :mod:`~.vshape` (the V
building blocks), :mod:`~.zb` (the ZB heuristic), :mod:`~.cooldown` (the paper's tight
cool-down), :mod:`~.tail` (critical-path cool-down), :mod:`~.refill` (cost-aware W placement),
:mod:`~.budget`, :mod:`~.pareto`, :mod:`~.tables`.
See docs/search.md.

    >>> from pipeblocks.search import search
    >>> r = search((8, 32), budget=0.75, family="v")     # unit costs by default
    >>> r.schedule.name, r.peak_fraction, round(r.bubble_rate, 4)
    ('search:v(f1=1,b1=2,b0=3,k0=5,k1=1,K=4)', 0.75, 0.0542)
"""

from pipeblocks.search.budget import Budget, BudgetKind
from pipeblocks.search.candidates import Objective
from pipeblocks.search.cooldown import tight_cooldown
from pipeblocks.search.engine import Progress, Searcher, SearchResult, search
from pipeblocks.search.pareto import Pareto, pareto
from pipeblocks.search.refill import refill_w
from pipeblocks.search.tail import replan_tail
from pipeblocks.search.vshape import VParams, v_block_of, v_params
from pipeblocks.search.zb import zb_memory_limited

__all__ = [
    "Budget",
    "BudgetKind",
    "Objective",
    "Progress",
    "Searcher",
    "SearchResult",
    "search",
    "Pareto",
    "pareto",
    "refill_w",
    "replan_tail",
    "tight_cooldown",
    "VParams",
    "v_params",
    "v_block_of",
    "zb_memory_limited",
]
