"""Collective costs: how long an all-reduce, reduce-scatter, all-gather or one transfer takes.

The model is the ring algorithm's (Patarasuk and Yuan 2009; NCCL's ring): a group of n ranks
moves ``(n - 1) / n`` of the buffer over every rank's link per phase, and pays one link latency
per step. With B bytes, bandwidth bw (bytes/s per rank and direction) and latency a (s):

- reduce-scatter and all-gather: ``(n - 1) * a + (n - 1) / n * B / bw``;
- all-reduce (a reduce-scatter, then an all-gather): ``2 (n - 1) * a + 2 (n - 1) / n * B / bw``;
- one point-to-point transfer: ``a + B / bw``.

A group is as fast as its slowest link: a group whose members all sit on one node uses the
intra-node link (NVLink-class), any other the inter-node link (one NIC per GPU). Ranks are laid
out the usual way: rank ``r`` is on node ``r // gpus_per_node``, and a group is ``size`` ranks
``stride`` apart (tensor-parallel groups stride 1, data-parallel groups stride tp, and so on).

    >>> net = Network(gpus_per_node=8, intra=Link(300e9, 5e-6), inter=Link(25e9, 10e-6))
    >>> round(net.all_reduce(1e9, size=8, stride=1) * 1e3, 3)       # one node: ms
    5.903
    >>> round(net.all_reduce(1e9, size=8, stride=8) * 1e3, 3)       # 8 nodes apart
    70.14
    >>> net.link(size=4, stride=2) == net.intra, net.link(size=2, stride=8) == net.inter
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeblocks.errors import SpecError

__all__ = ["Link", "Network", "ring_all_reduce", "ring_reduce_scatter", "ring_all_gather",
           "p2p"]


def _check(owner: str, name: str, value: float, *, positive: bool) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int | float) or value != value
    if bad or math.isinf(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise SpecError(f"{owner} '{name}' must be a finite number {need} (got {value!r}); "
                        f"give bandwidth in bytes/s and latency in seconds")


@dataclass(frozen=True, slots=True)
class Link:
    """One rank's link: ``bandwidth`` in bytes/s per direction, ``latency`` in seconds."""

    bandwidth: float
    latency: float = 0.0

    def __post_init__(self) -> None:
        _check("link", "bandwidth", self.bandwidth, positive=True)
        _check("link", "latency", self.latency, positive=False)


def _group(nbytes: float, size: int) -> None:
    _check("collective", "bytes", nbytes, positive=False)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SpecError(f"a collective's group size must be an integer >= 1 (got {size!r})")


def ring_reduce_scatter(nbytes: float, size: int, link: Link) -> float:
    """Seconds for ``size`` ranks to reduce-scatter a buffer of ``nbytes`` (0 for one rank)."""
    _group(nbytes, size)
    steps = size - 1
    return steps * link.latency + steps / size * nbytes / link.bandwidth


def ring_all_gather(nbytes: float, size: int, link: Link) -> float:
    """Seconds for ``size`` ranks to all-gather a buffer of ``nbytes`` (the gathered size)."""
    return ring_reduce_scatter(nbytes, size, link)


def ring_all_reduce(nbytes: float, size: int, link: Link) -> float:
    """Seconds for ``size`` ranks to all-reduce ``nbytes``: a reduce-scatter and an all-gather."""
    return 2.0 * ring_reduce_scatter(nbytes, size, link)


def p2p(nbytes: float, link: Link) -> float:
    """Seconds for one transfer of ``nbytes`` over ``link``."""
    _check("transfer", "bytes", nbytes, positive=False)
    return link.latency + nbytes / link.bandwidth


@dataclass(frozen=True, slots=True)
class Network:
    """Nodes of ``gpus_per_node`` GPUs: ``intra`` links inside a node, ``inter`` across."""

    gpus_per_node: int
    intra: Link
    inter: Link

    def __post_init__(self) -> None:
        g = self.gpus_per_node
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise SpecError(f"gpus_per_node must be an integer >= 1 (got {g!r})")

    def link(self, size: int, stride: int = 1) -> Link:
        """The slowest link of a group of ``size`` ranks ``stride`` apart, starting at a node's
        first GPU: intra-node when the group's span fits in one node."""
        span = (size - 1) * stride + 1
        return self.intra if span <= self.gpus_per_node else self.inter

    def all_reduce(self, nbytes: float, size: int, stride: int = 1) -> float:
        return ring_all_reduce(nbytes, size, self.link(size, stride))

    def reduce_scatter(self, nbytes: float, size: int, stride: int = 1) -> float:
        return ring_reduce_scatter(nbytes, size, self.link(size, stride))

    def all_gather(self, nbytes: float, size: int, stride: int = 1) -> float:
        return ring_all_gather(nbytes, size, self.link(size, stride))

    def send(self, nbytes: float, src: int, dst: int) -> float:
        """One transfer from global rank ``src`` to ``dst`` (0 when they are the same)."""
        if src == dst:
            return 0.0
        same = src // self.gpus_per_node == dst // self.gpus_per_node
        return p2p(nbytes, self.intra if same else self.inter)
