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

Loss scaling: the last stage backpropagates ``loss / m`` for each of the m microbatches, so the
accumulated gradients are those of the batch mean, scaled exactly once per step. Shapes of the
tensors between stages are agreed once, at the first step, by a handshake along the stage chain
(each stage runs a no-grad forward to learn its output shape). A failure in a pass is posted to
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.lowering import Comm, CommOp, LoweredSchedule, Payload, Transfer, lower, op_text
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.validate import validate
from pipeblocks.runtime.faults import Guard, RankFailure
from pipeblocks.runtime.p2p import P2P, Post, agree_shapes, tag_of
from pipeblocks.runtime.stage import LossFn, Stage, shared_parameters

__all__ = ["Executor", "StepResult", "StageRunner", "check_stages"]

log = logging.getLogger(__name__)


class StageRunner(Protocol):
    """What the executor asks of a stage (:class:`Stage`, or an emulated one)."""

    stage: int
    split: bool

    def forward(
        self, mb: int, x: torch.Tensor, target: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor: ...

    def backward_input(self, mb: int, grad_out: torch.Tensor | None) -> torch.Tensor | None: ...

    def backward_weight(self, mb: int) -> None: ...

    def backward(self, mb: int, grad_out: torch.Tensor | None) -> torch.Tensor | None: ...

    def pending(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step on one rank. Losses are known only on the rank that holds the last stage.

    ``start`` and ``end`` are ``time.perf_counter()`` readings (one clock for every process of
    a host) around the rank's program; ``peak_activation_bytes`` is the most
    activation memory its pending microbatches held at once (0 unless measured);
    ``trace`` holds, when recorded, ``(action, begin, ready, end)`` in seconds from the step's
    start: ``ready`` is when its input had arrived (so ``end - ready`` is the pass itself).
    """

    rank: int
    losses: tuple[float, ...] | None
    start: float
    end: float
    peak_activation_bytes: int = 0
    trace: tuple[tuple[str, float, float, float], ...] = ()

    @property
    def seconds(self) -> float:
        """This rank's wall time for the step."""
        return self.end - self.start

    @property
    def loss(self) -> float | None:
        """The batch loss: the mean over microbatches (None off the loss rank)."""
        return None if self.losses is None else sum(self.losses) / len(self.losses)


def check_stages(schedule: Schedule, rank: int, stages: Mapping[int, Any]) -> None:
    """Refuse stages that do not match the schedule, before any communication."""
    spec = schedule.spec
    want = tuple(spec.stages_of(rank))
    got = tuple(sorted(stages))
    if set(got) != set(want):
        raise SpecError(
            f"rank {rank} got stages {list(got)} but the schedule ({spec.describe()}, "
            f"{spec.num_stages} stages) puts stages {list(want)} on it; split the model into "
            f"{spec.num_stages} stages (p * v) and give each rank spec.stages_of(rank)"
        )


class Executor:
    """Runs ``schedule`` for this rank.

    ``stages`` maps each global stage on this rank to its module (wrapped in :class:`Stage`)
    or to a ready :class:`StageRunner`. ``optimizer`` (may be None) steps once per step after
    the gradients are complete; it zeroes the gradients at the start of each step.
    ``measure_memory`` counts the bytes autograd saves per microbatch (slower F).
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
        self.lowered: LoweredSchedule = lower(schedule)
        self.program = self.lowered.programs[rank]
        uses_b = {a.stage for a in schedule.programs[rank] if a.kind is Pass.B}
        modules = {s: m for s, m in stages.items() if isinstance(m, nn.Module)}
        tied = shared_parameters(modules)
        self.runners: dict[int, StageRunner] = {}
        for s, m in stages.items():
            if isinstance(m, nn.Module):
                self.runners[s] = Stage(
                    m, s, spec.num_stages, loss_fn,
                    split=s in uses_b and s not in tied, unsplit_reason=tied.get(s, ""),
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
        self._meta: dict[int, tuple[tuple[int, ...], torch.dtype]] = {}  # stage -> its input
        self._mb_shape: tuple[int, ...] = ()
        self.steps = 0

    # -- public ------------------------------------------------------------------------------

    def step(self, batch: torch.Tensor, targets: torch.Tensor | None) -> StepResult:
        """One training step over ``batch`` split into m microbatches along dim 0.

        Every rank may pass the whole batch; only stage 0 reads ``batch`` and only the last
        stage reads ``targets``.
        """
        m = self.spec.num_microbatches
        inputs = _split(batch, m, "batch")
        tgts: list[torch.Tensor | None] = (
            list(_split(targets, m, "targets")) if targets is not None else [None] * m)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if not self._mb_shape:
            self._handshake(inputs[0])
            self._mb_shape = tuple(inputs[0].shape)
        elif tuple(inputs[0].shape) != self._mb_shape:
            raise SpecError(
                f"microbatches of shape {tuple(inputs[0].shape)} but the first step agreed on "
                f"{self._mb_shape}; every step needs the same batch size (drop the last, "
                f"partial batch)"
            )
        start = time.perf_counter()
        losses, peak, trace = self._run(inputs, tgts, start)
        if self.optimizer is not None:
            self._where("optimizer step")
            self.optimizer.step()
        self.steps += 1
        return StepResult(self.rank, losses, start, time.perf_counter(), peak, tuple(trace))

    # -- the program -------------------------------------------------------------------------

    def _run(
        self, inputs: list[torch.Tensor], targets: list[torch.Tensor | None], start: float
    ) -> tuple[tuple[float, ...] | None, int, list[tuple[str, float, float, float]]]:
        spec, me, S = self.spec, self.rank, self.spec.num_stages
        scale = 1.0 / spec.num_microbatches
        posted: dict[Transfer, tuple[Any, torch.Tensor]] = {}
        outbox: dict[Transfer, torch.Tensor] = {}
        local: dict[tuple[Payload, int, int], torch.Tensor] = {}  # V turn hand-overs
        sends: list[tuple[Any, Comm, torch.Tensor]] = []  # the tensor lives until sent
        batch: list[tuple[Comm, Post]] = []
        losses: dict[int, torch.Tensor] = {}
        held: dict[tuple[int, int], int] = {}
        live = peak = 0
        trace: list[tuple[str, float, float, float]] = []
        ready = 0.0
        op: Any = None

        def flush() -> None:
            if not batch:
                return
            assert self.p2p is not None
            works = self.p2p.post([post for _, post in batch])
            for (comm, post), work in zip(batch, works, strict=True):
                if comm.op is CommOp.SEND:
                    sends.append((work, comm, post.tensor))
                else:
                    posted[comm.transfer] = (work, post.tensor)
            batch.clear()

        peer: list[Any] = [None]  # (rank, what) while blocked on a message

        def take(t: Transfer) -> torch.Tensor:
            nonlocal ready
            work, buf = posted.pop(t)
            src = spec.rank_of(t.src_stage)
            what = f"{t} from rank {src}"
            peer[0] = (src, what)
            with self._waiting(what, src):
                work.wait()
            peer[0] = None
            ready = time.perf_counter()
            return buf

        def give(t: Transfer, tensor: torch.Tensor) -> None:
            if spec.rank_of(t.dst_stage) == me:
                local[(t.payload, t.src_stage, t.mb)] = tensor
            else:
                outbox[t] = tensor

        try:
            for op in self.program:
                if isinstance(op, Comm):
                    t = op.transfer
                    if op.op is CommOp.SEND:
                        post = Post(True, outbox.pop(t), op.peer, tag_of(t, S))
                    else:
                        shape, dtype = self._meta[t.dst_stage if t.payload is Payload.ACT
                                                  else t.src_stage]
                        buf = torch.empty(shape, dtype=dtype, device=self.device)
                        post = Post(False, buf, op.peer, tag_of(t, S))
                    batch.append((op, post))
                    continue
                flush()
                a: Action = op
                s, j = a.stage, a.mb
                runner = self.runners[s]
                self._where(str(a))
                t0 = ready = time.perf_counter()
                if a.kind is Pass.F:
                    if s == 0:
                        x = inputs[j]
                    elif spec.rank_of(s - 1) == me:
                        x = local.pop((Payload.ACT, s - 1, j))
                    else:
                        x = take(Transfer(Payload.ACT, s - 1, s, j))
                    if self.measure_memory:
                        with _saved_bytes(self._param_ptrs) as counter:
                            out = runner.forward(j, x, targets[j], scale)
                        held[(s, j)] = counter[0]
                        live += counter[0]
                        peak = max(peak, live)
                    else:
                        out = runner.forward(j, x, targets[j], scale)
                    if s == S - 1:
                        losses[j] = out
                    else:
                        give(Transfer(Payload.ACT, s, s + 1, j), out)
                elif a.kind is Pass.W:
                    runner.backward_weight(j)
                    live -= held.pop((s, j), 0)
                else:
                    if s == S - 1:
                        g = None
                    elif spec.rank_of(s + 1) == me:
                        g = local.pop((Payload.GRAD, s + 1, j))
                    else:
                        g = take(Transfer(Payload.GRAD, s + 1, s, j))
                    if a.kind is Pass.B:
                        gx = runner.backward_input(j, g)
                    else:
                        gx = runner.backward(j, g)
                        live -= held.pop((s, j), 0)
                    if s > 0:
                        assert gx is not None
                        give(Transfer(Payload.GRAD, s, s - 1, j), gx)
                if self.record:
                    trace.append(
                        (str(a), t0 - start, ready - start, time.perf_counter() - start))
            flush()
            self._where("the end of the step (sends completing)")
            for work, comm, _ in sends:
                what = f"{comm.transfer} to rank {comm.peer} to complete"
                peer[0] = (comm.peer, what)
                with self._waiting(what, comm.peer):
                    work.wait()
        except RankFailure:
            raise
        except Exception as e:
            where = op_text(op) if op is not None else "the step"
            raise self._failure(where, e, peer[0]) from e
        mb_losses = None
        if losses:
            mb_losses = tuple(float(losses[j]) for j in range(spec.num_microbatches))
        return mb_losses, peak, trace

    # -- shapes ------------------------------------------------------------------------------

    def _handshake(self, first_input: torch.Tensor) -> None:
        self._where("the shape handshake")
        try:
            self._meta = agree_shapes(self.spec, self.rank, self.runners, first_input, self.p2p,
                                      self.device, self._waiting)
            log.debug("rank %d: tensors entering its stages and the next: %s", self.rank,
                      self._meta)
        except RankFailure:
            raise
        except Exception as e:
            raise self._failure("the shape handshake", e, None) from e

    # -- helpers -----------------------------------------------------------------------------

    def _failure(self, where: str, e: Exception, peer: tuple[Any, str] | None) -> RankFailure:
        """The error to stop with, naming the rank that failed first and its pass.

        A transport error while waiting on a peer usually means the peer died: give the
        launcher (which watches the processes) a moment to post that root cause.
        """
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {text[:300]}"
        if peer is None:
            msg = f"rank {self.rank} failed in {where}: {detail}"
            return RankFailure(self.guard.fail(msg) if self.guard is not None else msg)
        rank, what = peer
        here = f"rank {self.rank} stops in {where} (waiting for {what})"
        msg = f"rank {self.rank} lost rank {rank} in {where} (waiting for {what}): {detail}"
        if self.guard is None:
            return RankFailure(msg)
        cause = self.guard.posted(within=2.0) or self.guard.fail(msg)
        self.guard.stand_down()
        return RankFailure(cause if cause == msg else f"{here}: {cause}")

    def _where(self, what: str) -> None:
        if self.guard is not None:
            self.guard.where = what

    def _waiting(self, what: str, peer: int = -1) -> contextlib.AbstractContextManager[None]:
        if self.guard is None:
            return contextlib.nullcontext()
        return self.guard.waiting(what, peer)


def _split(t: torch.Tensor, m: int, what: str) -> list[torch.Tensor]:
    if t.shape[0] % m:
        raise SpecError(
            f"the {what} of {t.shape[0]} rows does not split into {m} equal microbatches; use a "
            f"batch size that is a multiple of {m}"
        )
    return list(t.chunk(m, dim=0))


@contextlib.contextmanager
def _saved_bytes(skip: set[int]) -> Iterator[list[int]]:
    """Count the bytes autograd saves in the block (each storage once, parameters excluded)."""
    counter = [0]
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in skip:
            seen.add(ptr)
            counter[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield counter
