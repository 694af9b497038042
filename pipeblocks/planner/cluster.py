"""The cluster: GPU count and memory, peak FLOP/s, the efficiency curve and the network.

The achieved fraction of peak FLOP/s falls for small matrix products (kernel launch, tile
quantisation, memory-bound element-wise work around them). The planner models the fraction a
transformer layer achieves as a saturating curve of the work of its largest product on one GPU,
``x = 2 * s * b * h * f / t`` FLOPs (the first MLP matrix)::

    efficiency(x) = peak_efficiency * x / (x + half_work)

``peak_efficiency`` = 0.74 and ``half_work`` = 3e10 FLOPs by default: the pair on a coarse grid
that best fitted the MFU Megatron-LM published for its 22B..1T GPT models on A100s (Korthikanti
et al. 2022) on an earlier version of the time model (`docs/make_planner_table.py` shows the
fit now, docs/planner.md the comparison and a held-out check). Pass your own, or a profile of
your GPUs (:mod:`~pipeblocks.planner.measured`), when you have them.

Default links are achieved (not nominal) figures for an 8-GPU A100/H100 node: 200 GB/s and
5 us inside a node (NVLink/NVSwitch bus bandwidth), 20 GB/s and 10 us across nodes (one
200 Gb/s NIC per GPU).

    >>> c = Cluster(gpus=16, gpus_per_node=8, gpu_memory=parse_bytes("80GB"), flops=312e12)
    >>> round(c.efficiency(3e10), 2), round(c.efficiency(1e13), 2)
    (0.37, 0.74)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pipeblocks.errors import SpecError
from pipeblocks.sim.collectives import Link, Network

__all__ = ["Cluster", "parse_bytes", "DEFAULT_INTRA", "DEFAULT_INTER", "PEAK_EFFICIENCY",
           "HALF_WORK"]

PEAK_EFFICIENCY = 0.74
HALF_WORK = 3e10

DEFAULT_INTRA = Link(200e9, 5e-6)
DEFAULT_INTER = Link(20e9, 10e-6)

_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> float:
    """``80GB``, ``80GiB``, ``1.5e9`` as bytes (GB = 1e9, GiB = 2**30).

    >>> parse_bytes("80GB"), parse_bytes("1GiB")
    (80000000000.0, 1073741824.0)
    """
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else ""
    try:
        value = float(m.group(1)) * _UNITS[unit] if m else math.nan
    except (ValueError, KeyError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise SpecError(f"memory size {text!r} is not a positive size; write e.g. 80GB or "
                        f"80GiB")
    return float(value)


@dataclass(frozen=True, slots=True)
class Cluster:
    """``gpus`` GPUs in nodes of ``gpus_per_node``; ``gpu_memory`` bytes and ``flops`` peak
    FLOP/s each (16-bit); ``reserved`` bytes per GPU the planner leaves free (CUDA context,
    allocator slack, NCCL buffers)."""

    gpus: int
    gpus_per_node: int = 8
    gpu_memory: float = 80e9
    flops: float = 312e12
    intra: Link = DEFAULT_INTRA
    inter: Link = DEFAULT_INTER
    peak_efficiency: float = PEAK_EFFICIENCY
    half_work: float = HALF_WORK
    reserved: float = 2e9
    network: Network = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("gpus", "gpus_per_node"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"cluster '{name}' must be an integer >= 1 (got {v!r})")
        for name in ("gpu_memory", "flops", "half_work"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise SpecError(f"cluster '{name}' must be a finite number > 0 (got {v!r})")
        if not 0 < self.peak_efficiency <= 1:
            raise SpecError(f"cluster 'peak_efficiency' must lie in (0, 1] "
                            f"(got {self.peak_efficiency!r})")
        if not 0 <= self.reserved < self.gpu_memory:
            raise SpecError(f"cluster 'reserved' must lie in 0..gpu_memory (got "
                            f"{self.reserved!r}, gpu_memory={self.gpu_memory!r}); lower "
                            f"--reserved or raise --gpu-memory")
        object.__setattr__(self, "network", Network(self.gpus_per_node, self.intra, self.inter))

    def efficiency(self, work: float) -> float:
        """Achieved fraction of peak for a layer whose largest product is ``work`` FLOPs."""
        return self.peak_efficiency * work / (work + self.half_work)
