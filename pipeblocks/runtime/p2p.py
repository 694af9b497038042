"""Point-to-point transfers between pipeline ranks: tags, posting, and the shape handshake.

Every message of a step has a tag derived from its transfer (payload, source stage,
microbatch), so two messages between the same ranks can never be mixed up, whatever order the
transport matches them in. gloo matches by (peer, tag); NCCL ignores tags and pairs messages
in posting order, which the lowering keeps FIFO-consistent per rank pair
(:mod:`pipeblocks.ir.lowering`).

    >>> from pipeblocks.ir.lowering import Payload, Transfer
    >>> tag_of(Transfer(Payload.ACT, 2, 3, 5), num_stages=8)
    84
    >>> tag_of(Transfer(Payload.GRAD, 3, 2, 5), num_stages=8)
    87
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeblocks.ir.lowering import Payload, Transfer

__all__ = ["tag_of", "handshake_tag", "Post", "P2P", "encode_meta", "decode_meta", "META_LEN"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
META_LEN = 10  # ndim, dtype code, up to 8 dims


def tag_of(transfer: Transfer, num_stages: int) -> int:
    """A tag unique to the transfer within a step: (mb * S + src_stage) * 2 + payload."""
    bit = 0 if transfer.payload is Payload.ACT else 1
    return (transfer.mb * num_stages + transfer.src_stage) * 2 + bit


def handshake_tag(stage: int, num_stages: int, num_microbatches: int) -> int:
    """Tag of the shape message for the activation entering ``stage`` (above every step tag)."""
    return 2 * num_stages * num_microbatches + stage


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

    send: bool
    tensor: torch.Tensor
    peer: int
    tag: int


class P2P:
    """Posts sends and receives on a process group.

    gloo: one ``isend``/``irecv`` per message, matched by tag. NCCL: each run of consecutive
    posts goes out as one ``batch_isend_irecv`` (a group call, so the sends and receives of a
    run cannot block each other).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.batched = dist.get_backend(group) == "nccl"

    def post(self, ops: Sequence[Post]) -> list[dist.Work]:
        """Post ``ops`` in order; one work handle per op (shared by a batch under NCCL)."""
        if not ops:
            return []
        if self.batched:
            p2p = [
                dist.P2POp(dist.isend if op.send else dist.irecv, op.tensor, op.peer, self.group,
                           op.tag)
                for op in ops
            ]
            works = dist.batch_isend_irecv(p2p)
            return list(works) if len(works) == len(ops) else [works[-1]] * len(ops)
        out = []
        for op in ops:
            fn = dist.isend if op.send else dist.irecv
            work = fn(op.tensor, op.peer, group=self.group, tag=op.tag)
            assert work is not None
            out.append(work)
        return out
