"""Pictures and traces of simulated schedules.

- :mod:`~pipeblocks.visual.timeline`: timeline figures (one row per rank on a true time axis,
  memory under it) and side-by-side comparisons; saved as .png, .svg or .pdf.
- :mod:`~pipeblocks.visual.pareto`: the memory-bubble trade-off of many schedules.
- :mod:`~pipeblocks.visual.trace`: Chrome / Perfetto trace JSON.
- :mod:`~pipeblocks.visual.ascii_timed`: the timed ASCII timeline for terminals.

matplotlib is the only plotting dependency and is imported only when a figure is made, so
this package imports (and the trace and ASCII work) without it.

    >>> import pipeblocks as pb
    >>> from pipeblocks.visual import chrome_trace
    >>> trace = chrome_trace(pb.simulate(pb.generate("gpipe", 2, 2)))
    >>> sum(e["ph"] == "X" for e in trace["traceEvents"])
    8
"""

from pipeblocks.visual.ascii_timed import timed_ascii
from pipeblocks.visual.figure import FORMATS, save_figure
from pipeblocks.visual.pareto import front, pareto_figure, plot_pareto
from pipeblocks.visual.timeline import compare_figure, draw_compare, draw_timeline, timeline_figure
from pipeblocks.visual.trace import chrome_trace, write_chrome_trace

__all__ = [
    "FORMATS",
    "chrome_trace",
    "compare_figure",
    "draw_compare",
    "draw_timeline",
    "front",
    "pareto_figure",
    "plot_pareto",
    "save_figure",
    "timed_ascii",
    "timeline_figure",
    "write_chrome_trace",
]
