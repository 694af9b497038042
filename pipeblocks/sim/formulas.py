"""Closed-form bubbles (docs/design.md, "Closed forms"), for ``compare`` and the tests.

:func:`bubble_formula` gives the per-rank bubble time of the papers' metric (max span minus
busy time) for the schedules that have a closed form under uniform costs with no transfer
cost; None where none is known (or the costs are outside the form's domain).

    >>> from pipeblocks.ir import PipelineSpec
    >>> bubble_formula("zb-h1", PipelineSpec(4, 8), f=1, b=2, w=1)    # (p-1)(F+B-W)
    6.0
    >>> bubble_rate_formula("1f1b", PipelineSpec(4, 8), f=1, b=1, w=1) == 3 / 11   # (p-1)/(m+p-1)
    True
"""

from __future__ import annotations

from pipeblocks.ir.spec import PipelineSpec

__all__ = ["bubble_formula", "bubble_rate_formula", "FORMULAS"]

FORMULAS = {
    "gpipe": "(p-1)(F+B+W)",
    "1f1b": "(p-1)(F+B+W)",
    "interleaved-1f1b": "(p-1)(F+B+W)/v",
    "zb-h1": "(p-1)(F+B-W) if m >= p and W <= F",
    "zb-h2": "(p-1)(F+B-2W) if m >= 2p-1, W <= F and F+B >= 2W",
    "zb-v": "0 if F = B = W and m >= 2p-1",
    "v-zb": "0 if F = B = W and m >= 2p-1",
}
"""The forms :func:`bubble_formula` knows, with their domains (times per rank, one
microbatch). The domains are where the simulator matches the form exactly (tests/sim): outside
them a deferred W no longer fits the gap it was meant to fill, or the warm-up is cut short."""


def bubble_formula(
    name: str, spec: PipelineSpec, *, f: float, b: float, w: float
) -> float | None:
    """Per-rank bubble time of schedule ``name`` (papers' metric), or None if no closed form.

    ``f``, ``b``, ``w`` are the per-rank times of one microbatch (a stage takes 1/v of them).
    """
    p, v = spec.num_ranks, spec.stages_per_rank
    if name in ("gpipe", "1f1b"):
        return float((p - 1) * (f + b + w))
    if name == "interleaved-1f1b":
        return float((p - 1) * (f + b + w) / v)
    m = spec.num_microbatches
    if name == "zb-h1":
        return float((p - 1) * (f + b - w)) if m >= p and w <= f else None
    if name == "zb-h2":
        ok = m >= 2 * p - 1 and w <= f and f + b >= 2 * w
        return float((p - 1) * (f + b - 2 * w)) if ok else None
    if name in ("zb-v", "v-zb"):
        return 0.0 if f == b == w and m >= 2 * p - 1 else None
    return None


def bubble_rate_formula(
    name: str, spec: PipelineSpec, *, f: float, b: float, w: float
) -> float | None:
    """The papers' bubble rate from :func:`bubble_formula`: bubble / (bubble + m(F+B+W))."""
    bubble = bubble_formula(name, spec, f=f, b=b, w=w)
    if bubble is None:
        return None
    busy = spec.num_microbatches * (f + b + w)
    total = bubble + busy
    return bubble / total if total > 0 else 0.0
