"""Evaluation batches as fill work: forward-only passes of the model being trained, run in the
gaps of every rank, stage to stage (docs/fill.md).

An eval microbatch e flows through the stages like a training one, but its passes are fill
tasks: rank r runs eval pass (s, e) of one of its stages s only in a gap, and only once the
input of (s, e) is there (stage 0 reads the eval batch; a stage after one on the same rank
takes it in memory; any other stage from a receive posted in advance). Its transfers go over a
process group of their own, each tagged by (stage, microbatch), and nothing ever blocks inside
a gap: a pass whose input has not arrived is left for a later gap (its fill task answers
``False``, see :class:`~pipeblocks.runtime.fill.FillRunner`). So the eval chain cannot
deadlock with the main program, and its order is the dependency order. :meth:`EvalFill.drain`
finishes what the gaps left, outside the steps (every rank calls it; it waits stage by stage
in increasing order, which the stages' chain makes safe).

The passes use the stages' weights as they are when each runs (after the optimizer steps
that came before). The last stage's rank keeps the losses, microbatch by microbatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pipeblocks.runtime.fill import FillWork
from pipeblocks.runtime.tree import flatten, unflatten

__all__ = ["EvalFill"]


class EvalFill:
    """Forward-only evaluation of ``batches`` (``(inputs, targets)`` per eval microbatch, the
    same on every rank, shaped as a training microbatch) through ``executor``'s stages.

    Every rank builds one, collectively (a process group for the eval transfers is made here
    when ``group`` is None and the pipeline has several ranks). :meth:`tasks` gives the fill
    queue's entries; ``seconds`` is a pass's estimated duration.
    """

    def __init__(self, executor: Any, batches: Sequence[tuple[Any, Any]], *, seconds: float,
                 group: Any = None) -> None:
        import torch.distributed as dist

        self.ex = executor
        self.spec = executor.spec
        self.batches = list(batches)
        self.seconds = seconds
        self.mine = list(self.spec.stages_of(executor.rank))
        self.next = dict.fromkeys(self.mine, 0)  # stage -> its next eval microbatch
        self.local: dict[tuple[int, int], Any] = {}  # (stage, mb) -> input handed over
        self.recvs: dict[tuple[int, int], list[tuple[Any, torch.Tensor]]] = {}
        self.sends: list[tuple[Any, torch.Tensor]] = []
        self.losses: dict[int, float] = {}
        if group is None and self.spec.num_ranks > 1:
            group = dist.new_group(backend="gloo" if executor.device.type == "cpu" else None)
        self.group = group

    def tasks(self) -> list[FillWork]:
        """One fill task per eval pass of this rank."""
        work = FillWork(self.step, self.seconds, name="eval")
        return [work] * (len(self.batches) * len(self.mine))

    @property
    def done(self) -> bool:
        return all(e >= len(self.batches) for e in self.next.values())

    def step(self) -> bool:
        """Run one eval pass whose input is there; False when none is (nothing ran)."""
        for s in self.mine:
            e = self.next[s]
            if e < len(self.batches) and self._ready(s, e):
                self._pass(s, e)
                return True
        return False

    def drain(self) -> dict[int, float]:
        """Finish every eval pass left (waiting for inputs) and the sends; the losses."""
        for s in self.mine:
            while self.next[s] < len(self.batches):
                for work, _ in self._posted(s, self.next[s]):
                    work.wait()
                self._pass(s, self.next[s])
        for work, _ in self.sends:
            work.wait()
        self.sends.clear()
        return dict(sorted(self.losses.items()))

    # -- inside -------------------------------------------------------------------------------

    def _remote(self, s: int) -> bool:
        return s > 0 and self.spec.rank_of(s - 1) != self.ex.rank

    def _posted(self, s: int, e: int) -> list[tuple[Any, torch.Tensor]]:
        """The receives of (s, e)'s input, posted on first ask (shapes from the handshake)."""
        import torch.distributed as dist

        if not self._remote(s):
            return []
        if (s, e) not in self.recvs:
            peer = self.spec.rank_of(s - 1)
            wire = self.ex._meta[s]  # what enters stage s, agreed at the first step
            posts = []
            for k, (shape, dtype, _) in enumerate(wire.leaves):
                buf = torch.empty(shape, dtype=dtype, device=self.ex.device)
                posts.append((dist.irecv(buf, peer, group=self.group,
                                         tag=self._tag(s, e, k)), buf))
            self.recvs[(s, e)] = posts
        return self.recvs[(s, e)]

    def _tag(self, s: int, e: int, leaf: int) -> int:
        return (e * self.spec.num_stages + s) * 64 + leaf  # p2p.MAX_LEAVES bounds leaf

    def _ready(self, s: int, e: int) -> bool:
        if s == 0:
            return True
        if not self._remote(s):
            return (s, e) in self.local
        return all(w.is_completed() for w, _ in self._posted(s, e))

    def _input(self, s: int, e: int) -> Any:
        if s == 0:
            return self.batches[e][0]
        if not self._remote(s):
            return self.local.pop((s, e))
        bufs = [buf for _, buf in self.recvs.pop((s, e))]
        return unflatten(self.ex._meta[s].structure, bufs)

    def _pass(self, s: int, e: int) -> None:
        import torch.distributed as dist

        x = self._input(s, e)
        with torch.no_grad():
            out = self.ex.runners[s].evaluate(x, self.batches[e][1], {})
        self.next[s] = e + 1
        if s == self.spec.num_stages - 1:
            loss = out[0] / max(1, out[1]) if isinstance(out, tuple) else out
            self.losses[e] = float(loss)
        elif self.spec.rank_of(s + 1) == self.ex.rank:
            self.local[(s + 1, e)] = out
        else:
            leaves, _ = flatten(out, f"stage {s}'s eval output")
            peer = self.spec.rank_of(s + 1)
            for k, x in enumerate(leaves):
                x = x.detach().contiguous()
                self.sends.append((dist.isend(x, peer, group=self.group,
                                              tag=self._tag(s + 1, e, k)), x))
        if e + 1 < len(self.batches) and self._remote(s):
            self._posted(s, e + 1)  # the next input's receive goes out early
