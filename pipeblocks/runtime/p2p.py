"""Point-to-point transfers between pipeline ranks: tags, posting, and the shape handshake.

Every message of a step has a tag derived from its transfer (payload, source stage,
microbatch), so two messages between the same ranks can never be mixed up, whatever order the
transport matches them in. gloo matches by (peer, tag); NCCL ignores tags and pairs messages
in posting order, which the lowering keeps FIFO-consistent per rank pair
(:mod:`pipeblocks.ir.lowering`).

    >>> from pipeblocks.ir.lowering import Payload, Transfer
    >>> tag_of(Transfer(Payload.ACT, 2, 3, 5), num_stages=8)
    2688
    >>> tag_of(Transfer(Payload.GRAD, 3, 2, 5), num_stages=8, leaf=1)
    2785
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeblocks.errors import SpecError
from pipeblocks.ir.lowering import CommOp, Payload, Transfer
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.runtime.tree import flatten, unflatten

__all__ = ["tag_of", "handshake_tag", "Post", "P2P", "encode_meta", "decode_meta", "META_LEN",
           "Meta", "Wire", "agree_shapes", "one_way_ms", "MAX_LEAVES"]

Meta = tuple[tuple[int, ...], torch.dtype]  # shape and dtype of a tensor between stages
Waiting = Callable[[str, int], contextlib.AbstractContextManager[None]]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
META_LEN = 10  # ndim, dtype code, up to 8 dims


MAX_LEAVES = 32  # tensors per transfer (they travel as one message, see runtime/steps.py;
# the tag keeps room for one message per tensor)


def tag_of(transfer: Transfer, num_stages: int, leaf: int = 0) -> int:
    """A tag unique to one tensor of a transfer within a step:
    ((mb * S + src_stage) * 2 + payload) * MAX_LEAVES + leaf."""
    bit = 0 if transfer.payload is Payload.ACT else 1
    return ((transfer.mb * num_stages + transfer.src_stage) * 2 + bit) * MAX_LEAVES + leaf


def handshake_tag(stage: int, num_stages: int, num_microbatches: int) -> int:
    """Tag of the shape message for the activation entering ``stage`` (above every step tag)."""
    return 2 * num_stages * num_microbatches * MAX_LEAVES + stage


def encode_meta(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A fixed-size int64 tensor describing a tensor's shape and dtype.

    >>> decode_meta(encode_meta((4, 32, 64), torch.float32))
    ((4, 32, 64), torch.float32)
    """
    if len(shape) > META_LEN - 2:
        raise ValueError(f"tensors between stages may have at most {META_LEN - 2} dims (got {len(shape)})")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype} cannot be sent between stages; use one of {_DTYPES}")
    meta = [len(shape), _DTYPES.index(dtype), *shape]
    return torch.tensor(meta + [0] * (META_LEN - len(meta)), dtype=torch.int64)


def decode_meta(meta: torch.Tensor) -> tuple[tuple[int, ...], torch.dtype]:
    values = [int(v) for v in meta.tolist()]
    ndim, code = values[0], values[1]
    return tuple(values[2 : 2 + ndim]), _DTYPES[code]


@dataclass(frozen=True, slots=True)
class Post:
    """One non-blocking operation to post: send ``tensor`` to, or receive it from, ``peer``."""

    op: CommOp
    tensor: torch.Tensor
    peer: int
    tag: int


_POST = {CommOp.SEND: dist.isend, CommOp.RECV: dist.irecv}


class P2P:
    """Posts sends and receives on a process group.

    gloo: one ``isend``/``irecv`` per message, matched by tag. NCCL: each run of consecutive
    posts goes out as one ``batch_isend_irecv`` (a group call, so the sends and receives of a
    run cannot block each other).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.batched = dist.get_backend(group) == "nccl"
        # peers are ranks in ``group``; torch.distributed's dst/src are global ranks
        self._global = (None if group is None or group is dist.group.WORLD else
                        dist.get_process_group_ranks(group))

    def post(self, ops: Sequence[Post]) -> list[dist.Work]:
        """Post ``ops`` in order; one work handle per op (shared by a batch under NCCL)."""
        if not ops:
            return []
        if self.batched:
            p2p = [
                dist.P2POp(_POST[op.op], op.tensor, self._peer(op.peer), self.group,
                           op.tag)
                for op in ops
            ]
            works = dist.batch_isend_irecv(p2p)
            return list(works) if len(works) == len(ops) else [works[-1]] * len(ops)
        out = []
        for op in ops:
            fn = _POST[op.op]
            work = fn(op.tensor, self._peer(op.peer), group=self.group, tag=op.tag)
            assert work is not None
            out.append(work)
        return out

    def _peer(self, peer: int) -> int:
        return peer if self._global is None else self._global[peer]


@dataclass(frozen=True, slots=True)
class Wire:
    """What enters a stage: the structure (:mod:`pipeblocks.runtime.tree`) and, per tensor,
    its shape, dtype and whether a gradient goes back for it."""

    structure: Any
    leaves: tuple[tuple[tuple[int, ...], torch.dtype, bool], ...]

    @property
    def grads(self) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
        """Shape and dtype of each gradient going back, in order."""
        return tuple((shape, dtype) for shape, dtype, g in self.leaves if g)

    def encode(self) -> torch.Tensor:
        """A fixed-size uint8 tensor (JSON) holding the wire, to send."""
        text = json.dumps([self.structure, [[list(sh), _DTYPES.index(dt), g]
                                            for sh, dt, g in self.leaves]]).encode()
        if len(text) > WIRE_BYTES:
            raise SpecError(f"the structure between stages takes {len(text)} bytes to describe "
                            f"(at most {WIRE_BYTES}); return fewer tensors")
        return torch.frombuffer(bytearray(text.ljust(WIRE_BYTES)), dtype=torch.uint8).clone()

    @staticmethod
    def decode(buf: torch.Tensor) -> Wire:
        structure, leaves = json.loads(bytes(buf.cpu().tolist()).decode().rstrip())
        return Wire(structure, tuple((tuple(sh), _DTYPES[c], bool(g)) for sh, c, g in leaves))

    @staticmethod
    def of(x: Any, stage: int) -> Wire:
        """The wire of ``x`` (detached leaves requiring grad where a gradient goes back)."""
        leaves, structure = flatten(x, f"stage {stage}'s output")
        if len(leaves) > MAX_LEAVES:
            raise SpecError(f"stage {stage} returns {len(leaves)} tensors; at most {MAX_LEAVES} "
                            f"travel between stages (pack them into fewer tensors)")
        for t in leaves:
            if t.dtype not in _DTYPES:
                raise SpecError(f"stage {stage} returns a {t.dtype} tensor, which cannot be sent "
                                f"between stages; use one of {_DTYPES}")
        return Wire(structure, tuple((tuple(t.shape), t.dtype, bool(t.requires_grad))
                                     for t in leaves))

    def zeros(self, device: torch.device) -> Any:
        """A stand-in input of this wire (zeros; leaves with a gradient require grad)."""
        return unflatten(self.structure, [
            torch.zeros(sh, dtype=dt, device=device).requires_grad_(g) for sh, dt, g in self.leaves])


WIRE_BYTES = 4096


def agree_shapes(
    spec: PipelineSpec,
    rank: int,
    runners: Mapping[int, Any],
    first_input: Any,
    side: Mapping[str, Any],
    p2p: P2P | None,
    device: torch.device,
    waiting: Waiting,
) -> dict[int, Wire]:
    """The :class:`Wire` entering each stage of this rank, and leaving it (the next stage's).

    Each rank takes its stages in forward order: it learns a stage's input (from the
    microbatch, from its own previous stage, or from a message of the previous stage's rank),
    runs the stage once to learn its output (nothing kept), and sends that on. Sends are
    non-blocking and every receive waits only on a smaller stage, so this cannot lock.
    Gradients have the shape of the tensors they belong to.
    """
    S, m = spec.num_stages, spec.num_microbatches
    if p2p is not None and p2p.batched:
        # NCCL: the first batched P2P of a group must not be its first call; one collective
        # that every rank joins sets the communicator up
        dist.barrier(group=p2p.group)
    meta: dict[int, Wire] = {}
    sends = []
    for s in sorted(runners):
        if s == 0:
            x = first_input
        else:
            src = spec.rank_of(s - 1)
            if src != rank:
                assert p2p is not None
                buf = torch.empty(WIRE_BYTES, dtype=torch.uint8, device=device)
                (work,) = p2p.post([Post(CommOp.RECV, buf, src, handshake_tag(s, S, m))])
                with waiting(f"the shape of stage {s}'s input from rank {src}", src):
                    work.wait()
                meta[s] = Wire.decode(buf)
            x = meta[s].zeros(device)
        if s == S - 1:
            continue
        meta[s + 1] = Wire.of(_probe(runners[s], x, side), s)
        dst = spec.rank_of(s + 1)
        if dst != rank:
            assert p2p is not None
            t = meta[s + 1].encode().to(device)  # NCCL sends device tensors only
            sends += [(w, t) for w in p2p.post([Post(CommOp.SEND, t, dst, handshake_tag(s + 1, S, m))])]
    for work, _ in sends:
        with waiting("a shape message to be received", -1):
            work.wait()
    return meta


def _probe(runner: Any, x: Any, side: Mapping[str, Any]) -> Any:
    if hasattr(runner, "out_meta") and not hasattr(runner, "probe"):  # it knows its output
        shape, dtype = runner.out_meta(x)
        return torch.zeros(shape, dtype=dtype).requires_grad_(dtype.is_floating_point)
    return runner.probe(x, side)


def one_way_ms(shape: Sequence[int], reps: int = 25, device: torch.device | str = "cpu") -> float:
    """One-way time (ms) of a float32 tensor of ``shape`` from rank 0 to rank 1 (median).

    As on a pipeline's critical path, the receiver is already waiting when the message is
    posted; both ends read one host clock, so no round trip is needed. Every rank gets the
    result; 0.0 without a process group of at least 2 ranks. The first 5 messages (warm-up)
    are not counted.
    """
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return 0.0
    rank = dist.get_rank()
    buf = torch.zeros(tuple(shape), device=device)
    stamp = torch.zeros(1, dtype=torch.float64, device=device)
    delays = []
    for _ in range(reps):
        if rank == 0:
            time.sleep(0.002)  # let rank 1 block in its receive first
            stamp[0] = time.perf_counter()
            dist.send(buf, 1)
            dist.send(stamp, 1)
        elif rank == 1:
            dist.recv(buf, 0)
            got = time.perf_counter()
            dist.recv(stamp, 0)
            delays.append(got - float(stamp[0]))
    out = torch.tensor([statistics.median(delays[5:]) * 1e3 if delays[5:] else 0.0],
                       dtype=torch.float64, device=device)
    dist.broadcast(out, src=1)
    return float(out)

