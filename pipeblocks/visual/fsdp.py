"""Pictures of an FSDP2 step: unshard, reshard and reduce_grad beside the passes, and the
parameter memory of each rank (:func:`pipeblocks.sim.fsdp.simulate_fsdp`).

:func:`fsdp_trace` is a Perfetto trace: each rank's passes on thread 0 (a pass that found its
stage resharded starts with a ``gather sS`` event, the blocking all-gather), its ops on thread
1 (``dp comm``: ``unshard sS``, ``reduce_grad sS``, and ``reshard sS`` with no duration), and a
counter track ``param memory`` (parameter + gradient bytes). :func:`fsdp_figure` draws the
same as a picture: per rank a pass lane and a comm lane under it, then the memory panel.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim.collectives import Link, Network
    >>> from pipeblocks.sim.costs import UniformCosts
    >>> from pipeblocks.sim.fsdp import simulate_fsdp
    >>> net = Network(gpus_per_node=8, intra=Link(1e9), inter=Link(1e9))
    >>> sim = simulate_fsdp(generate("1f1b", 2, 2), UniformCosts(f=1, b=1, w=1),
    ...                     param_bytes=4e6, dp=2, network=net, seconds_per_unit=1e-3)
    >>> [e["name"] for e in fsdp_trace(sim)["traceEvents"]
    ...  if e["ph"] == "X" and e["pid"] == 1 and e["tid"] == 1]
    ['unshard s1', 'reduce_grad s1', 'reshard s1']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.sim.fsdp import FSDPSimulation
from pipeblocks.visual.figure import new_figure, save_figure, stack
from pipeblocks.visual.palette import color, text_color

__all__ = ["fsdp_trace", "fsdp_figure", "COMM_COLORS"]

COMM_COLORS = {"unshard": "#6a3d9a", "reduce_grad": "#b15928", "reshard": "#1f1f1f",
               "gather": "#cab2d6"}
"""Colours of the data-parallel ops (and of a pass's blocking all-gather)."""


def _x(rank: int, tid: int, name: str, t0: float, t1: float, us: float,
       **args: Any) -> dict[str, Any]:
    return {"ph": "X", "name": name, "pid": rank, "tid": tid, "ts": t0 * us,
            "dur": (t1 - t0) * us, "args": args}


def fsdp_trace(sim: FSDPSimulation, *, us_per_unit: float = 1000.0) -> dict[str, Any]:
    """The Trace Event Format object of ``sim`` (times: ``us_per_unit`` us per time unit)."""
    if not us_per_unit > 0:
        raise SpecError(f"us_per_unit must be > 0 (got {us_per_unit}); e.g. 1000 for ms units")
    us = us_per_unit
    events: list[dict[str, Any]] = []
    for rank, spans in enumerate(sim.spans):
        for tid, name in ((0, "passes"), (1, "dp comm")):
            events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid,
                           "args": {"name": name}})
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
                       "args": {"name": f"rank {rank}"}})
        for s in spans:
            a = s.action
            if s.gather > 0:
                events.append(_x(rank, 0, f"gather s{a.stage}", s.start, s.start + s.gather, us,
                                 stage=a.stage, kind="gather"))
            events.append(_x(rank, 0, f"{a.kind.value} s{a.stage} mb{a.mb}",
                             s.start + s.gather, s.end, us, stage=a.stage, microbatch=a.mb,
                             kind=a.kind.value))
        for c in sim.comms[rank]:
            events.append(_x(rank, 1, f"{c.kind} s{c.stage}", c.start, c.end, us,
                             stage=c.stage, kind=c.kind))
        for t, held in sim.memory[rank]:
            events.append({"ph": "C", "name": "param memory", "pid": rank, "tid": 0,
                           "ts": t * us, "args": {"bytes": held}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"makespan": sim.makespan, "peak_bytes": list(sim.peak_bytes),
                          "us_per_unit": us}}


def fsdp_figure(sim: FSDPSimulation, path: str | Path | None = None, *,
                width: float = 10.0) -> Any:
    """The step as a matplotlib Figure (saved to ``path`` when given): per rank, its passes
    (a blocking all-gather hatched at the start) and under them its unshard / reduce_grad
    boxes and reshard ticks; below, each rank's parameter + gradient bytes over time."""
    from matplotlib.patches import Rectangle

    ranks = len(sim.spans)
    fig = new_figure(width, 1.0 + 0.6 * ranks + 1.6)
    (tl, mem) = stack(fig, [0.6 * ranks, 1.4], gap=0.45, top=0.3, bottom=0.45, left=0.9,
                      right=0.2)
    ax, mx = fig.add_axes(tl), fig.add_axes(mem)
    for r, spans in enumerate(sim.spans):
        y = ranks - 1 - r
        for s in spans:
            if s.end <= s.start or s.action.kind is Pass.W:
                continue
            face = color(s.action.kind)
            if s.gather > 0:
                ax.add_patch(Rectangle((s.start, y + 0.45), s.gather, 0.5, hatch="///",
                                       facecolor=COMM_COLORS["gather"], edgecolor="white"))
            t0 = s.start + s.gather
            ax.add_patch(Rectangle((t0, y + 0.45), s.end - t0, 0.5, facecolor=face,
                                   edgecolor="white"))
            ax.text((t0 + s.end) / 2, y + 0.7, f"{s.action.mb}", ha="center", va="center",
                    fontsize=6, color=text_color(face))
        for c in sim.comms[r]:
            if c.kind == "reshard":
                ax.plot([c.start, c.start], [y + 0.05, y + 0.4], color=COMM_COLORS["reshard"])
                continue
            ax.add_patch(Rectangle((c.start, y + 0.05), c.end - c.start, 0.35,
                                   facecolor=COMM_COLORS[c.kind], edgecolor="white"))
        mx.step([t for t, _ in sim.memory[r]], [b for _, b in sim.memory[r]], where="post",
                label=f"rank {r}")
    ax.set_xlim(0, sim.makespan)
    ax.set_ylim(0, ranks)
    ax.set_yticks([ranks - 1 - r + 0.5 for r in range(ranks)],
                  [f"rank {r}" for r in range(ranks)])
    ax.set_title("FSDP2 step: passes (top lane), unshard / reduce_grad / reshard (bottom)",
                 fontsize=8)
    mx.set_xlim(0, sim.makespan)
    mx.set_ylabel("param + grad bytes", fontsize=7)
    mx.legend(fontsize=6, loc="upper right")
    if path is not None:
        save_figure(fig, path)
    return fig
