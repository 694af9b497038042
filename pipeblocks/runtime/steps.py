"""What one step carries: the result a rank returns, the state passed from pass to pass.

    >>> r = StepResult(rank=0, losses=(1.0, 3.0), start=0.0, end=0.5, weights=(0.75, 0.25))
    >>> r.loss, r.seconds
    (1.5, 0.5)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from pipeblocks.errors import SpecError
from pipeblocks.ir.lowering import Comm, Payload, Transfer
from pipeblocks.ir.schedule import Schedule
from pipeblocks.runtime.p2p import Post
from pipeblocks.runtime.tree import flatten

__all__ = ["StepResult", "StageRunner", "check_stages"]


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
    weights: tuple[float, ...] = ()  # token mean: each microbatch's share of the tokens
    # (with data parallel, of the dp group's tokens over dp: the replicas' losses average
    # to the global batch's token mean)

    @property
    def seconds(self) -> float:
        """This rank's wall time for the step."""
        return self.end - self.start

    @property
    def loss(self) -> float | None:
        """The batch loss: the mean over microbatches, or over tokens with a token count
        (``weights``); None off the loss rank."""
        if self.losses is None:
            return None
        if self.weights:
            return sum(x * w for x, w in zip(self.losses, self.weights, strict=True))
        return sum(self.losses) / len(self.losses)


@dataclass(slots=True)
class _StepState:
    """What one step carries from pass to pass on this rank."""

    inputs: list[Any]
    targets: list[Any]
    side: list[dict[str, Any]]
    scale: float  # each microbatch's loss is scaled by 1/m (or 1/tokens): the batch mean's
    start: float
    posted: dict[Transfer, list[tuple[Any, torch.Tensor]]] = field(default_factory=dict)
    outbox: dict[Transfer, list[torch.Tensor]] = field(default_factory=dict)  # to send
    local: dict[tuple[Payload, int, int], Any] = field(default_factory=dict)  # V turn
    counts: dict[int, int] = field(default_factory=dict)  # token counts (token mean)
    tokens: float = 1.0  # what the token sums are divided by (hybrid.dp_tokens)
    evaluate: bool = False  # forward only, nothing kept
    batch: list[tuple[Comm, list[Post]]] = field(default_factory=list)  # queued, not posted
    sends: list[tuple[Any, Comm, torch.Tensor]] = field(default_factory=list)  # in flight
    losses: dict[int, torch.Tensor] = field(default_factory=dict)
    held: dict[tuple[int, int], int] = field(default_factory=dict)  # (stage, mb) -> bytes
    live: int = 0
    peak: int = 0
    trace: list[tuple[str, float, float, float]] = field(default_factory=list)
    ready: float = 0.0  # when the running pass's input arrived
    peer: tuple[int, str] | None = None  # the rank and message this rank is blocked on


def _shapes(obj: Any) -> tuple[Any, ...]:
    """What the handshake depends on: the structure, shapes and dtypes of a microbatch."""
    leaves, structure = flatten(obj, "the batch")
    return json.dumps(structure), tuple((tuple(t.shape), t.dtype) for t in leaves)


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


def check_count(expected: int | None, count: int | None, count_tokens: Any, j: int) -> None:
    """A token-mean loss needs both halves, and they must agree (microbatch ``j``)."""
    if count is None and count_tokens is None:
        return
    if count is None or count_tokens is None:
        raise SpecError(
            "a token-mean loss needs both: the loss function returning (sum, count) and "
            "Executor(count_tokens=fn) giving each microbatch's count from its targets "
            f"(got count_tokens={count_tokens!r}, a loss count of {count}); pass both or "
            "neither")
    if count != expected:
        raise SpecError(
            f"microbatch {j}: the loss counted {count} tokens but count_tokens gave "
            f"{expected}; they must agree (the scale 1/total is set before the passes)")


# Note "one message per transfer": several tensors of a transfer travel as one byte buffer
# (each padded to 8 bytes, so every piece is aligned for its dtype); a single tensor travels
# as itself, with no copy. Each message costs a fixed overhead (about 0.1-0.2 ms under gloo on
# the 2-core machine), so k tensors as k messages would add k-1 of them to every hop.
_ALIGN = 8


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    return -(-n // _ALIGN) * _ALIGN


def pack(leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors to send for ``leaves``: themselves if one, else one byte buffer."""
    if len(leaves) <= 1:
        return leaves
    parts = []
    for t in leaves:
        raw = t.contiguous().reshape(-1).view(torch.uint8)
        pad = _nbytes(tuple(t.shape), t.dtype) - raw.numel()
        parts.append(raw)
        if pad:
            parts.append(raw.new_zeros(pad))
    return [torch.cat(parts)]


def receive_buffers(metas: list[tuple[tuple[int, ...], torch.dtype]], device: torch.device
                    ) -> list[torch.Tensor]:
    """Buffers to receive the tensors of ``metas`` into, as :func:`pack` sends them."""
    if len(metas) == 1:
        return [torch.empty(metas[0][0], dtype=metas[0][1], device=device)]
    if not metas:
        return []
    total = sum(_nbytes(sh, dt) for sh, dt in metas)
    return [torch.empty(total, dtype=torch.uint8, device=device)]


def unpack(bufs: list[torch.Tensor], metas: list[tuple[tuple[int, ...], torch.dtype]]
           ) -> list[torch.Tensor]:
    """The tensors of ``metas`` out of what :func:`receive_buffers` received (views)."""
    if len(metas) <= 1:
        return bufs
    (buf,) = bufs
    out, at = [], 0
    for shape, dtype in metas:
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        out.append(buf[at: at + n].view(dtype).view(shape).detach())
        at += _nbytes(shape, dtype)
    return out


class StageRunner(Protocol):
    """What the executor asks of a stage (:class:`Stage`, or an emulated one)."""

    stage: int
    split: bool

    def forward(
        self, mb: int, x: Any, target: Any = None, scale: float = 1.0,
        side: Mapping[str, Any] | None = None,
    ) -> Any: ...

    def backward_input(self, mb: int, grad_out: Any) -> Any: ...

    def backward_weight(self, mb: int) -> None: ...

    def backward(self, mb: int, grad_out: Any) -> Any: ...

    def pending(self) -> int: ...


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
