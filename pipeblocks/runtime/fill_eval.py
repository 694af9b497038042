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
finishes what is left after the last step (every rank calls it).

Weights: at most ``per_step`` eval microbatches start in a step, and at the end of the step's
program, before the optimizer step, :meth:`EvalFill.end_step` finishes those still on the way
(waiting, stage by stage in increasing order: each input comes from a lower stage, finished
first, so this cannot deadlock either). So every eval microbatch sees the weights of one step,
and its loss equals a plain evaluation of them. The last stage's rank keeps the losses.
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
    queue's entries; ``seconds`` is a pass's estimated duration. At most ``per_step`` eval
    microbatches start per step and :meth:`end_step` (the runner's ``at_end``) finishes them
    before the optimizer step. ``store`` (a ``torch.distributed`` store every rank reaches,
    keys under ``pipeblocks-fill/<name>/``) carries a flag per sent eval activation, so a
    receive can be polled on gloo; without it the works are asked (NCCL can answer).
    """

    def __init__(self, executor: Any, batches: Sequence[tuple[Any, Any]], *, seconds: float,
                 per_step: int = 1, group: Any = None, store: Any = None,
                 name: str = "eval") -> None:
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
        self.per_step = per_step
        self.limit = min(per_step, len(self.batches))  # microbatches this step may finish
        self.store, self.name = store, name
        if group is None and self.spec.num_ranks > 1:
            group = dist.new_group(backend="gloo" if executor.device.type == "cpu" else None)
        self.group = group

    def end_step(self) -> None:
        """At the end of a step's program, before the optimizer: finish this step's eval
        microbatches (so each sees one step's weights), then allow the next ``per_step``."""
        self._finish(self.limit)
        self.limit = min(len(self.batches), self.limit + self.per_step)

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
            if e < self.limit and self._ready(s, e):
                self._pass(s, e)
                return True
        return False

    def drain(self) -> dict[int, float]:
        """Finish every eval pass left (waiting for inputs) and the sends; the losses."""
        self._finish(len(self.batches))
        for work, _ in self.sends:
            work.wait()
        self.sends.clear()
        return dict(sorted(self.losses.items()))

    # -- inside -------------------------------------------------------------------------------

    def _finish(self, limit: int) -> None:
        """Run this rank's eval passes up to microbatch ``limit``, stage by stage in order,
        waiting for inputs (safe: each input comes from a lower stage, finished first)."""
        for s in self.mine:
            while self.next[s] < limit:
                self._pass(s, self.next[s])

    def _key(self, s: int, e: int) -> str:
        return f"pipeblocks-fill/{self.name}/{s}/{e}"

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
        posted = self._posted(s, e)
        if self.store is not None:  # gloo cannot poll a receive: the sender's flag can be
            return bool(self.store.check([self._key(s, e)]))
        return all(w.is_completed() for w, _ in posted)

    def _input(self, s: int, e: int) -> Any:
        if s == 0:
            return self.batches[e][0]
        if not self._remote(s):
            return self.local.pop((s, e))
        posted = self._posted(s, e)
        del self.recvs[(s, e)]
        for work, _ in posted:
            work.wait()
        if self.store is not None:
            self.store.delete_key(self._key(s, e))
        bufs = [buf for _, buf in posted]
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
            if self.store is not None:
                self.store.set(self._key(s + 1, e), "1")
        if e + 1 < len(self.batches) and self._remote(s):
            self._posted(s, e + 1)  # the next input's receive goes out early
