"""The pipeline spec: how many ranks, microbatches and stages, and where each stage lives.

    >>> spec = PipelineSpec(num_ranks=4, num_microbatches=8, stages_per_rank=2, placement="v")
    >>> spec.num_stages, spec.rank_of(5), spec.stages_of(1)
    (8, 2, (1, 6))

Placements (docs/design.md, "Placements"):

- ``loop``: stage s on rank s mod p (v=1 is the plain chain, v>1 interleaved).
- ``v``: v=2; stage s on rank s for s < p, else on rank 2p-1-s. The model goes down the ranks and
  back up, so the last stage (and the loss) sits on rank 0 and the turn on rank p-1 is local
  (see the note "V turn" in :mod:`pipeblocks.ir`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError

__all__ = ["Placement", "PipelineSpec"]


class Placement(enum.Enum):
    """How stages map to ranks."""

    LOOP = "loop"
    V = "v"

    @classmethod
    def _missing_(cls, value: object) -> Placement:
        raise SpecError(f"unknown placement {value!r}; use one of: loop, v")


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """Sizes of a pipeline and its placement. Strings are accepted for ``placement``."""

    num_ranks: int
    num_microbatches: int
    stages_per_rank: int = 1
    placement: Placement = Placement.LOOP

    def __post_init__(self) -> None:
        expect("PipelineSpec", "placement", self.placement, (Placement, str))
        if isinstance(self.placement, str):
            try:
                object.__setattr__(self, "placement", Placement(self.placement))
            except ValueError:
                known = ", ".join(p.value for p in Placement)
                raise SpecError(
                    f"unknown placement {self.placement!r}; use one of: {known}"
                ) from None
        for field, value, flag in (
            ("num_ranks", self.num_ranks, "-p"),
            ("num_microbatches", self.num_microbatches, "-m"),
            ("stages_per_rank", self.stages_per_rank, "--stages-per-rank"),
        ):
            expect("PipelineSpec", field, value, int)
            if value < 1:
                raise SpecError(f"{field} must be >= 1 (got {value}); use {flag} 1 or more")
        if self.placement is Placement.V and self.stages_per_rank != 2:
            raise SpecError(
                f"placement 'v' holds exactly 2 stages per rank (got stages_per_rank="
                f"{self.stages_per_rank}); use --stages-per-rank 2"
            )

    @property
    def num_stages(self) -> int:
        """S = num_ranks * stages_per_rank."""
        return self.num_ranks * self.stages_per_rank

    def rank_of(self, stage: int) -> int:
        """The rank that holds global stage ``stage``."""
        p = self.num_ranks
        if not 0 <= stage < self.num_stages:
            raise SpecError(f"stage {stage} is out of range 0..{self.num_stages - 1}")
        if self.placement is Placement.V:
            return stage if stage < p else 2 * p - 1 - stage
        return stage % p

    def local_of(self, stage: int) -> int:
        """The stage's slot on its rank: 0..stages_per_rank-1, in forward order."""
        if not 0 <= stage < self.num_stages:
            raise SpecError(f"stage {stage} is out of range 0..{self.num_stages - 1}")
        return stage // self.num_ranks

    def stages_of(self, rank: int) -> tuple[int, ...]:
        """The global stages on ``rank``, by local slot."""
        p = self.num_ranks
        if not 0 <= rank < p:
            raise SpecError(f"rank {rank} is out of range 0..{p - 1}")
        if self.placement is Placement.V:
            return (rank, 2 * p - 1 - rank)
        return tuple(rank + k * p for k in range(self.stages_per_rank))

    def describe(self) -> str:
        """``p=4 m=8 v=2 placement=v``."""
        return (
            f"p={self.num_ranks} m={self.num_microbatches} v={self.stages_per_rank} "
            f"placement={self.placement.value}"
        )
