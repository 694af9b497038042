"""Chrome / Perfetto traces of a simulated timeline (the Trace Event Format, JSON object form).

One complete event (``"ph": "X"``) per pass, with the rank as the process (``pid``) and one
thread (``tid`` 0) per rank; names read ``F s3 mb5`` (kind, global stage, microbatch) and the
args carry ``stage``, ``microbatch``, ``chunk`` (the stage's local index on its rank) and
``kind``. Each rank also gets a counter track (``"ph": "C"``, name ``memory``) with one sample
per step of its activation memory, in the cost model's unit, so the track's maximum is the
rank's simulated peak. Metadata events name the processes ``rank r`` and keep them in rank
order. Times are microseconds in the format; ``us_per_unit`` says how many one simulated time
unit is (default 1000: a unit shows as 1 ms). Open the file in ui.perfetto.dev or
chrome://tracing.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> trace = chrome_trace(simulate(generate("1f1b", 2, 2)))
    >>> [e["name"] for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 1]
    ['F s1 mb0', 'BW s1 mb0', 'F s1 mb1', 'BW s1 mb1']
    >>> max(e["args"]["held"] for e in trace["traceEvents"]
    ...     if e["ph"] == "C" and e["pid"] == 0)
    2.0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.sim.engine import Simulation

__all__ = ["chrome_trace", "write_chrome_trace"]


def chrome_trace(simulation: Simulation, *, us_per_unit: float = 1000.0) -> dict[str, Any]:
    """The trace of ``simulation`` as a JSON-ready dict (``{"traceEvents": [...], ...}``)."""
    if not us_per_unit > 0:
        raise SpecError(f"us_per_unit must be > 0 (got {us_per_unit}); e.g. 1000 for ms units")
    spec = simulation.schedule.spec
    events: list[dict[str, Any]] = []
    for rank in range(spec.num_ranks):
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
                       "args": {"name": f"rank {rank}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0,
                       "args": {"sort_index": rank}})
        events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": 0,
                       "args": {"name": "passes"}})
    for rank, spans in enumerate(simulation.spans):
        for s in spans:
            a = s.action
            events.append({
                "ph": "X",
                "name": f"{a.kind.value} s{a.stage} mb{a.mb}",
                "cat": a.kind.value,
                "pid": rank,
                "tid": 0,
                "ts": s.start * us_per_unit,
                "dur": (s.end - s.start) * us_per_unit,
                "args": {"stage": a.stage, "microbatch": a.mb,
                         "chunk": spec.local_of(a.stage), "kind": a.kind.value},
            })
    for rank, steps in enumerate(simulation.memory):
        # Every step, even several at one time: the viewer shows the last, the maximum over
        # the samples stays the simulated peak.
        for t, held in steps:
            events.append({"ph": "C", "name": "memory", "pid": rank, "tid": 0,
                           "ts": t * us_per_unit, "args": {"held": held}})
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "schedule": simulation.schedule.name,
            "spec": spec.describe(),
            "makespan": simulation.makespan,
            "bubble_rate": simulation.bubble_rate,
            "bubble_rate_global": simulation.bubble_rate_global,
            "peak_memory": list(simulation.peak_memory),
            "peak_fraction": simulation.peak_fraction,
            "us_per_unit": us_per_unit,
        },
    }


def write_chrome_trace(simulation: Simulation, path: str | Path, *,
                       us_per_unit: float = 1000.0) -> Path:
    """Write :func:`chrome_trace` of ``simulation`` to ``path`` as JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(simulation, us_per_unit=us_per_unit)) + "\n")
    return path
