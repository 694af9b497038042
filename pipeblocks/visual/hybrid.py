"""Traces of a data-parallel step: the passes, and each rank's gradient reductions beside them.

:func:`data_parallel_trace` is :func:`pipeblocks.visual.trace.chrome_trace` of the pipeline's
simulation plus one complete event per ``reduce_grad`` op of
:func:`pipeblocks.sim.hybrid.simulate_data_parallel`, on a second thread of the rank (``tid``
1, named ``dp comm``): the reductions run beside the passes, not in their stream.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim.collectives import Link, Network
    >>> from pipeblocks.sim.costs import UniformCosts
    >>> from pipeblocks.sim.hybrid import simulate_data_parallel
    >>> net = Network(gpus_per_node=2, intra=Link(1e9), inter=Link(1e8))
    >>> dp = simulate_data_parallel(generate("1f1b", 2, 4), UniformCosts(f=1, b=1, w=1),
    ...                             grad_bytes=1e6, dp=2, network=net, seconds_per_unit=1e-3)
    >>> [(e["pid"], e["name"]) for e in data_parallel_trace(dp)["traceEvents"]
    ...  if e["ph"] == "X" and e["tid"] == 1]
    [(0, 'reduce_grad s0'), (1, 'reduce_grad s1')]
"""

from __future__ import annotations

from typing import Any

from pipeblocks.sim.hybrid import DataParallelSimulation
from pipeblocks.visual.trace import chrome_trace

__all__ = ["data_parallel_trace"]


def data_parallel_trace(sim: DataParallelSimulation, *, us_per_unit: float = 1000.0
                        ) -> dict[str, Any]:
    """The Trace Event Format object of ``sim``: passes on thread 0, reductions on thread 1."""
    trace = chrome_trace(sim.base, us_per_unit=us_per_unit)
    events = trace["traceEvents"]
    for rank, reductions in enumerate(sim.reductions):
        events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": 1,
                       "args": {"name": "dp comm"}})
        for r in reductions:
            events.append({"ph": "X", "name": f"reduce_grad s{r.stage}", "pid": rank, "tid": 1,
                           "ts": r.start * us_per_unit, "dur": (r.end - r.start) * us_per_unit,
                           "args": {"stage": r.stage, "kind": "reduce_grad"}})
    return trace
