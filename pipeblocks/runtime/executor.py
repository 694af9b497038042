"""The executor: runs any schedule's lowered program for one rank on torch.distributed.

There is no per-schedule code. The schedule is validated and lowered once
(:func:`pipeblocks.ir.lowering.lower`); each :meth:`Executor.step` then walks this rank's ops:

- ``send``/``recv``: post a non-blocking transfer (a run of consecutive posts goes out as one
  batch); tags come from the transfer (:func:`pipeblocks.runtime.p2p.tag_of`).
- ``F``: take the input (the microbatch on stage 0, else the received or locally handed-over
  activation), run the stage, and hand the output on: to the next stage's rank through the
  outbox, or in memory when the next stage is on this rank (the V turn, see
  :mod:`pipeblocks.ir`). The last stage applies the loss.
- ``B``/``BW``: take the output gradient the same way (none on the last stage, where the loss
  is the root) and hand the input gradient back; ``W``: accumulate weight gradients.

Loss scaling: the last stage backpropagates ``loss / m`` for each of the m microbatches (or
``sum / tokens`` of the batch with ``count_tokens``), so the accumulated gradients are those of
the batch mean, scaled exactly once per step. What travels between stages (a tensor or a
structure of them, :mod:`pipeblocks.runtime.tree`) is agreed by a handshake along the stage
chain at the first step and whenever the microbatch's shapes change (each stage runs a forward
that keeps nothing to learn its output). Weights tied across ranks get their gradients summed
after the passes (:mod:`pipeblocks.runtime.ties`). A failure in a pass is posted to
the :class:`~pipeblocks.runtime.faults.Guard` so every rank stops with a message naming the rank
and the pass.

    >>> import torch, pipeblocks as pb
    >>> s = pb.generate("1f1b", num_ranks=1, num_microbatches=2)
    >>> ex = Executor(s, {0: torch.nn.Linear(3, 3)}, torch.nn.functional.mse_loss, None, rank=0)
    >>> res = ex.step(torch.ones(4, 3), torch.zeros(4, 3))
    >>> len(res.losses), res.loss == sum(res.losses) / 2
    (2, True)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.hybrid import Collective, DPMode, with_data_parallel
from pipeblocks.ir.lowering import Comm, CommOp, LoweredSchedule, Payload, Transfer, lower, op_text
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.validate import validate
from pipeblocks.runtime.faults import Guard, RankFailure, pass_failure
from pipeblocks.runtime.hybrid import dp_tokens
from pipeblocks.runtime.offload import Move, pooled_bytes, run_move, with_moves
from pipeblocks.runtime.p2p import P2P, Post, Wire, agree_shapes, tag_of
from pipeblocks.runtime.recompute import kept_bytes, rebuilt, stage_class
from pipeblocks.runtime.stage import LossFn, Stage, shared_parameters
from pipeblocks.runtime.steps import (
    StageRunner,
    StepResult,
    _saved_bytes,
    _shapes,
    _StepState,
    check_count,
    check_stages,
    pack,
    receive_buffers,
    unpack,
)
from pipeblocks.runtime.ties import TiedGrads, clip_grad_norm, unique_parameters
from pipeblocks.runtime.tree import flatten, split_tree, unflatten

__all__ = ["Executor", "StepResult", "StageRunner", "check_stages"]

log = logging.getLogger(__name__)


class Executor:
    """Runs ``schedule`` for this rank.

    ``stages`` maps each global stage on this rank to its module (wrapped in :class:`Stage`)
    or to a ready :class:`StageRunner`. ``optimizer`` (may be None) steps once per step after
    the gradients are complete; it zeroes the gradients at the start of each step.
    ``measure_memory`` counts the bytes autograd saves per microbatch (slower F).
    ``count_tokens``: the token-mean loss (docs/models.md). ``ties``: weights shared by
    stages, as (stage, name) per copy (default: those ``split`` found); ``check_ties``: refuse
    equal weights on different ranks that no tie names. ``autocast``: run every F under
    ``torch.autocast`` with this dtype (bf16 on CPU; bf16 or fp16 on CUDA). ``checkpoint``:
    recompute the layers it selects in backward (:mod:`pipeblocks.runtime.checkpointing`).
    """

    def __init__(
        self,
        schedule: Schedule,
        stages: Mapping[int, nn.Module | StageRunner],
        loss_fn: LossFn | None,
        optimizer: torch.optim.Optimizer | None,
        *,
        rank: int | None = None,
        guard: Guard | None = None,
        group: Any = None,
        device: torch.device | str | None = None,
        measure_memory: bool = False,
        record: bool = False,
        count_tokens: Callable[[Any], Any] | None = None,
        ties: Sequence[Sequence[tuple[int, str]]] | None = None,
        check_ties: bool = True,
        autocast: torch.dtype | None = None,
        checkpoint: Callable[[nn.Module], bool] | None = None,
        reducer: Any = None,
        fill: Any = None,
    ) -> None:
        import torch.distributed as dist

        if rank is None:
            rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.rank = rank
        self.schedule = schedule
        self.spec = spec = schedule.spec
        check_stages(schedule, rank, stages)
        if dist.is_initialized() and dist.get_world_size(group) != spec.num_ranks:
            raise SpecError(
                f"the schedule has {spec.num_ranks} ranks but the process group has "
                f"{dist.get_world_size(group)}; launch {spec.num_ranks} processes"
            )
        if spec.num_ranks > 1 and not dist.is_initialized():
            raise SpecError("a schedule over several ranks needs torch.distributed initialised")
        validate(schedule)
        self.reducer = reducer  # data parallel (runtime/hybrid.py): its ops join the program
        self.lowered: LoweredSchedule = with_moves(lower(schedule) if reducer is None else (
            with_data_parallel(lower(schedule), DPMode(getattr(reducer, "mode", "ddp")))))
        self.program = self.lowered.programs[rank]
        uses_b = {a.stage for a in schedule.programs[rank] if a.kind is Pass.B}
        modules = {s: m for s, m in stages.items() if isinstance(m, nn.Module)}
        tied = shared_parameters(modules)
        self.count_tokens = count_tokens
        cast = None
        if autocast is not None:
            kind = torch.device(device).type if device is not None else next(
                (p.device.type for m in modules.values() for p in m.parameters()), "cpu")
            cast = (kind, autocast)
        self.runners: dict[int, StageRunner] = {}
        for s, m in stages.items():
            if isinstance(m, nn.Module):
                self.runners[s] = stage_class(schedule, s)(  # recompute: runtime/recompute.py
                    m, s, spec.num_stages, loss_fn,
                    split=s in uses_b and s not in tied, unsplit_reason=tied.get(s, ""),
                    autocast=cast, checkpoint=checkpoint,
                )
            else:
                self.runners[s] = m
        self.optimizer = optimizer
        self.guard = guard
        self.p2p = P2P(group) if spec.num_ranks > 1 else None
        params = [p for m in modules.values() for p in m.parameters()]
        self.device = torch.device(device) if device is not None else (
            params[0].device if params else torch.device("cpu"))
        self.measure_memory = measure_memory
        self.record = record
        self._param_ptrs = {p.data_ptr() for p in params}
        self.ties: TiedGrads | None = None
        if modules and spec.num_ranks > 1:
            self.ties = TiedGrads.build(spec, rank, modules, ties, check_ties, group)
        self._meta: dict[int, Wire] = {}  # stage -> what enters it
        self._key: Any = None  # the shapes the handshake agreed for
        self.steps, self.fill = 0, fill  # fill: a runtime.fill.FillRunner (docs/fill.md)

    # -- public ------------------------------------------------------------------------------

    def step(self, batch: Any, targets: Any = None, side: Mapping[str, Any] | None = None
             ) -> StepResult:
        """One training step over ``batch`` split into m microbatches along dim 0.

        ``batch`` is a tensor or a structure of them (:mod:`pipeblocks.runtime.tree`);
        ``side`` names tensors split per microbatch the same way and given to the stages that
        ask for them (attention masks, position ids). Every rank passes a batch, targets and
        side inputs of the same shapes (the whole batch is simplest): only stage 0 reads
        ``batch`` and only the last stage reads ``targets``, but when the shapes change
        between steps (a new sequence length) every rank agrees on them again.
        """
        st = self._prepare(batch, targets, side)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        losses = self._run(st)
        if self.reducer is not None:  # wait for the reduce_grad ops' all-reduces
            self.reducer.finish()
        if self.ties is not None:
            self._where("the all-reduce of tied parameters' gradients")
            self.ties.reduce()
        if self.optimizer is not None:
            self._where("optimizer step")
            self.optimizer.step()
        self.steps += 1
        return self._result(st, losses)

    def eval(self, batch: Any, targets: Any = None, side: Mapping[str, Any] | None = None
             ) -> StepResult:
        """A forward-only step: the losses, no gradients, no activations kept."""
        st = self._prepare(batch, targets, side)
        st.evaluate = True
        with torch.no_grad():
            losses = self._run(st)
        return self._result(st, losses)

    def parameters(self) -> list[nn.Parameter]:
        """This rank's parameters, each once (a weight tied between its stages too)."""
        return unique_parameters(r.module for r in self.runners.values() if isinstance(r, Stage))

    def zero_grad(self) -> None:
        """Drop every gradient of this rank's parameters (``.grad = None``)."""
        for p in self.parameters():
            p.grad = None

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale every gradient of the pipeline so that their global 2-norm (over every stage
        on every rank, a tied weight counted once) is at most ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` does on the whole model; returns the norm before.
        Every rank calls it (one all-reduce)."""
        return clip_grad_norm(self.parameters(), max_norm, self.ties, self.device, self.p2p)

    def _prepare(self, batch: Any, targets: Any, side: Mapping[str, Any] | None) -> _StepState:
        m = self.spec.num_microbatches
        inputs = split_tree(batch, m, "batch")
        tgts = split_tree(targets, m, "targets") if targets is not None else [None] * m
        sides: list[dict[str, Any]] = [{} for _ in range(m)]
        for name, value in (side or {}).items():
            for j, part in enumerate(split_tree(value, m, f"side input '{name}'")):
                sides[j][name] = part
        key = _shapes((inputs[0], sides[0]))
        if key != self._key:  # the first step, or shapes changed: agree on them again
            self._handshake(inputs[0], sides[0])
            self._key = key
        st = _StepState(inputs, tgts, sides, 1.0 / m, time.perf_counter())
        last = self.spec.num_stages - 1
        if self.count_tokens is not None and last in self.runners:
            for j, t in enumerate(tgts):
                st.counts[j] = int(self.count_tokens(t))
            st.tokens = dp_tokens(self.reducer, sum(st.counts.values()), self.device)
            st.scale = 1.0 / st.tokens
        return st

    def _result(self, st: _StepState, losses: tuple[float, ...] | None) -> StepResult:
        weights: tuple[float, ...] = ()
        if losses is not None and st.counts:
            weights = tuple(st.counts[j] / st.tokens for j in range(len(losses)))
            losses = tuple(x / max(1, st.counts[j]) for j, x in enumerate(losses))
        return StepResult(self.rank, losses, st.start, time.perf_counter(), st.peak,
                          tuple(st.trace), weights)

    # -- the program -------------------------------------------------------------------------
    # One step walks this rank's lowered ops in order: a run of send/recv ops is queued and
    # posted as one batch when the next pass starts (``_flush``); each pass takes its input
    # (``_inbound``), runs, and hands its output on (``_outbound``).

    def _run(self, st: _StepState) -> tuple[float, ...] | None:
        op: Any = None
        try:
            for op in self.program:
                if isinstance(op, Comm):
                    if not (st.evaluate and op.transfer.payload is Payload.GRAD):
                        self._queue(st, op)
                    continue
                self._flush(st)
                if self.fill is not None:
                    self.fill.gap(op, st)
                self._where(str(op))
                t0 = st.ready = time.perf_counter()
                if op.kind is Pass.F:
                    self._forward(st, op)
                elif st.evaluate:
                    continue
                elif isinstance(op, Collective):  # a Collective's kind is never a Pass
                    self.reducer.run(op)
                elif isinstance(op, Move):  # offload / reload: runtime/offload.py
                    run_move(self, st, op)
                elif op.kind is Pass.W:
                    self._weight(st, op)
                else:
                    self._backward(st, op)
                if self.record:
                    now = time.perf_counter()
                    st.trace.append((str(op), t0 - st.start, st.ready - st.start, now - st.start))
            self._flush(st)
            self._complete_sends(st)
            if self.fill is not None:  # the end of the program: fill's step-end work, tail
                self.fill.gap(None, st)
        except RankFailure:
            raise
        except Exception as e:
            where = op_text(op) if op is not None else "the step"
            raise self._failure(where, e, st.peer) from e
        if not st.losses:
            return None
        return tuple(float(st.losses[j]) for j in range(self.spec.num_microbatches))

    def _forward(self, st: _StepState, a: Action) -> None:
        s, j, runner = a.stage, a.mb, self.runners[a.stage]
        x = st.inputs[j] if s == 0 else self._inbound(st, Payload.ACT, s - 1, s, j)
        if st.evaluate:
            out = runner.evaluate(x, st.targets[j], st.side[j])  # type: ignore[attr-defined]
        elif self.measure_memory:
            with _saved_bytes(self._param_ptrs) as counter:
                out = runner.forward(j, x, st.targets[j], st.scale, side=st.side[j])
            counter[0] += kept_bytes(runner, j) + pooled_bytes(runner, j)  # recompute, offload
            st.held[(s, j)] = counter[0]
            st.live += counter[0]
            st.peak = max(st.peak, st.live)
        else:
            out = runner.forward(j, x, st.targets[j], st.scale, side=st.side[j])
        if s == self.spec.num_stages - 1:
            if isinstance(out, tuple):  # evaluate with a (sum, count) loss
                out, count = out
                st.counts[j] = int(count)
            st.losses[j] = out
            if not st.evaluate:
                check_count(st.counts.get(j), getattr(runner, "last_count", None),
                            self.count_tokens, j)
        else:
            self._outbound(st, Transfer(Payload.ACT, s, s + 1, j), out)

    def _backward(self, st: _StepState, a: Action) -> None:
        """B (input gradient only) or BW (both); the last stage's root is its loss."""
        s, j, runner = a.stage, a.mb, self.runners[a.stage]
        last = s == self.spec.num_stages - 1
        g = None if last else self._inbound(st, Payload.GRAD, s + 1, s, j)
        with rebuilt(st, (s, j), runner, self._param_ptrs if self.measure_memory else None):
            gx = runner.backward_input(j, g) if a.kind is Pass.B else runner.backward(j, g)
        if a.kind is not Pass.B:
            st.live -= st.held.pop((s, j), 0)
        if s > 0:
            assert gx is not None
            wire = self._meta[s]
            if wire.structure == ["leaf"]:  # a bare tensor: B returned its gradient
                gx = [gx] if wire.leaves[0][2] else []
            self._outbound(st, Transfer(Payload.GRAD, s, s - 1, j), list(gx))

    def _weight(self, st: _StepState, a: Action) -> None:
        self.runners[a.stage].backward_weight(a.mb)
        st.live -= st.held.pop((a.stage, a.mb), 0)

    # -- transfers ---------------------------------------------------------------------------

    def _inbound(self, st: _StepState, payload: Payload, src: int, dst: int, j: int) -> Any:
        """What a pass needs: handed over in memory (the V turn) or received (the input
        rebuilt from its tensors, or the list of gradients)."""
        if self.spec.rank_of(src) == self.rank:
            return st.local.pop((payload, src, j))
        t = Transfer(payload, src, dst, j)
        posted = st.posted.pop(t)
        peer = self.spec.rank_of(src)
        what = f"{t} from rank {peer}"
        st.peer = (peer, what)
        with self._waiting(what, peer):
            for work, _ in posted:
                work.wait()
        st.peer = None
        st.ready = time.perf_counter()
        wire = self._meta[dst if payload is Payload.ACT else src]
        metas = wire.grads if payload is Payload.GRAD else [(sh, dt) for sh, dt, _ in wire.leaves]
        bufs = unpack([buf for _, buf in posted], metas)
        if payload is Payload.GRAD:
            return bufs
        for buf, (_, _, g) in zip(bufs, wire.leaves, strict=True):
            buf.requires_grad_(g and not st.evaluate)
        return unflatten(wire.structure, bufs)

    def _outbound(self, st: _StepState, t: Transfer, out: Any) -> None:
        """Hand a pass's output on: in memory to a stage on this rank, else to its send op."""
        if self.spec.rank_of(t.dst_stage) == self.rank:
            st.local[(t.payload, t.src_stage, t.mb)] = out
        elif t.payload is Payload.GRAD:
            st.outbox[t] = pack([g.detach() for g in out])
        else:
            leaves, structure = flatten(out, f"stage {t.src_stage}'s output")
            wire = self._meta[t.dst_stage]
            if structure != wire.structure or len(leaves) != len(wire.leaves):
                raise SpecError(
                    f"stage {t.src_stage} returned {structure} for microbatch {t.mb} but the "
                    f"handshake agreed on {wire.structure}; a stage must return the same "
                    f"structure for every microbatch of a step")
            st.outbox[t] = pack([x.detach() for x in leaves])

    def _queue(self, st: _StepState, c: Comm) -> None:
        t = c.transfer
        if c.op is CommOp.SEND:
            tensors = st.outbox.pop(t)
        else:
            wire = self._meta[t.dst_stage if t.payload is Payload.ACT else t.src_stage]
            metas = wire.grads if t.payload is Payload.GRAD else [
                (sh, dt) for sh, dt, _ in wire.leaves]
            tensors = receive_buffers(metas, self.device)
        S = self.spec.num_stages
        st.batch.append((c, [Post(c.op, x, c.peer, tag_of(t, S, k))
                             for k, x in enumerate(tensors)]))

    def _flush(self, st: _StepState) -> None:
        """Post the queued run of sends and receives as one batch."""
        if not st.batch:
            return
        assert self.p2p is not None
        works = iter(self.p2p.post([post for _, posts in st.batch for post in posts]))
        for c, posts in st.batch:
            got = [(next(works), post.tensor) for post in posts]
            if c.op is CommOp.SEND:
                st.sends.extend((work, c, x) for work, x in got)  # tensors live until sent
            else:
                st.posted[c.transfer] = got
        st.batch.clear()

    def _complete_sends(self, st: _StepState) -> None:
        self._where("the end of the step (sends completing)")
        for work, c, _ in st.sends:
            what = f"{c.transfer} to rank {c.peer} to complete"
            st.peer = (c.peer, what)
            with self._waiting(what, c.peer):
                work.wait()
        st.peer = None

    # -- shapes ------------------------------------------------------------------------------

    def _handshake(self, first_input: Any, side: Mapping[str, Any]) -> None:
        self._where("the shape handshake")
        try:
            self._meta = agree_shapes(self.spec, self.rank, self.runners, first_input, side,
                                      self.p2p, self.device, self._waiting)
            log.debug("rank %d: tensors entering its stages and the next: %s", self.rank,
                      self._meta)
        except RankFailure:
            raise
        except Exception as e:
            raise self._failure("the shape handshake", e, None) from e

    # -- helpers -----------------------------------------------------------------------------

    def _failure(self, where: str, e: Exception, peer: tuple[Any, str] | None) -> RankFailure:
        return pass_failure(self.rank, self.guard, where, e, peer)

    def _where(self, what: str) -> None:
        if self.guard is not None:
            self.guard.where = what

    def _waiting(self, what: str, peer: int = -1) -> contextlib.AbstractContextManager[None]:
        if self.guard is None:
            return contextlib.nullcontext()
        return self.guard.waiting(what, peer)
