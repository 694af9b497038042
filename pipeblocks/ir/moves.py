"""Offload data: the host link, the chosen (stage, microbatch) pairs and the move ops.

The data half of :mod:`pipeblocks.ir.offload` (kept apart so that :mod:`pipeblocks.ir.schedule`
can hold an :class:`Offload` without importing the functions that build schedules).

    >>> link = OffloadLink(bandwidth=2.0, latency=0.1)
    >>> round(link.seconds(1.0), 6), str(Move(MoveKind.RELOAD, 1, 3))
    (0.6, 'reload(1#3)')
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pipeblocks.errors import SpecError

__all__ = ["OffloadLink", "Offload", "MoveKind", "Move"]


@dataclass(frozen=True, slots=True)
class OffloadLink:
    """Each rank's link to host memory: ``bandwidth`` in the cost model's memory units per time
    unit (bytes per second for byte models timed in seconds; stage-activations per F for the
    unit model; ``math.inf``, the default: a copy takes only its latency), ``latency`` per copy
    in time units, ``shared``: the copies use the same link as the rank's outgoing pipeline
    transfers (docs/memory.md, "Offload")."""

    bandwidth: float = math.inf
    latency: float = 0.0
    shared: bool = False

    def __post_init__(self) -> None:
        for name in ("bandwidth", "latency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or (
                    name == "latency" and math.isinf(v)):
                raise SpecError(f"offload link {name} must be a number (got {v!r}; only the "
                                f"bandwidth may be infinite)")
        if self.bandwidth <= 0 or self.latency < 0:
            raise SpecError(
                f"offload link needs bandwidth > 0 and latency >= 0 (got bandwidth="
                f"{self.bandwidth}, latency={self.latency}); e.g. --offload-link 2,0.01")
        if not isinstance(self.shared, bool):
            raise SpecError(f"offload link 'shared' must be true or false (got {self.shared!r})")

    def seconds(self, amount: float) -> float:
        """Time one copy of ``amount`` memory units takes (latency included)."""
        return self.latency + amount / self.bandwidth


@dataclass(frozen=True, slots=True)
class Offload:
    """Which ``(stage, microbatch)`` pairs move their saved activations to host memory after
    their F and back before their B, and over which link."""

    pairs: frozenset[tuple[int, int]]
    link: OffloadLink = OffloadLink()

    def __post_init__(self) -> None:
        pairs = frozenset(self.pairs)
        for p in pairs:
            if not (isinstance(p, tuple) and len(p) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in p)):
                raise SpecError(f"offload pairs are (stage, microbatch) integer pairs (got {p!r})")
        object.__setattr__(self, "pairs", pairs)
        if not isinstance(self.link, OffloadLink):
            raise SpecError(f"offload link must be an OffloadLink (got {self.link!r})")

    def stages(self) -> frozenset[int]:
        """The stages with at least one offloaded microbatch."""
        return frozenset(s for s, _ in self.pairs)


class MoveKind(enum.Enum):
    """A copy between device and host memory."""

    OFFLOAD = "offload"  # device -> host, right after the F
    RELOAD = "reload"  # host -> device, before the B (one pass ahead of it)


@dataclass(frozen=True, slots=True)
class Move:
    """One asynchronous copy of the activations ``stage`` saved for microbatch ``mb``. Its
    ``kind`` is never a :class:`~pipeblocks.ir.actions.Pass` (executors dispatch on it)."""

    kind: MoveKind
    stage: int
    mb: int

    def __str__(self) -> str:
        return f"{self.kind.value}({self.stage}#{self.mb})"
