"""Activation offload in the runtime: saved tensors move to a host pool and back.

For a stage with offloaded pairs (``schedule.offload``, :mod:`pipeblocks.ir.offload`) the
executor builds an :class:`OffloadStage`. Its F runs under ``torch.autograd.graph.
saved_tensors_hooks``: every tensor autograd saves, except the parameters and the stage input
(which stay on the device, as the simulator counts), goes into the microbatch's pool and the
graph keeps a handle. The lowered program's ``offload(s#j)`` op (after the F and its sends)
copies the pool to host memory and drops the device copies; ``reload(s#j)`` (before the pass
that precedes the B) copies them back, and B (and W, which reads tensors saved in F too: the
B/W split stays on) unpack the reloaded tensors. On CPU the host copy is a clone into the pool
(the device copy released), so the accounting is testable on one machine; on CUDA the copies
go to pinned memory on a side stream and the B waits for the reload's event.

``link_bps`` (``pipeblocks train --emulate-link GB/s``) charges each copy's time,
bytes / bandwidth, by sleeping on one side thread per direction, so copies overlap compute as
the simulator says (:mod:`pipeblocks.sim.offload`); the B waits for its reload's sleep.
Emulated stages (:class:`OffloadEmulated`) move nothing and charge the bytes of their output.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
    >>> st = OffloadStage(net, stage=1, num_stages=3)
    >>> x = torch.randn(2, 4)
    >>> out = st.forward(0, x)
    >>> st.offload(0) > 0, st.device_bytes(0), st.host_bytes(0) > 0   # the input stays
    (True, 32, True)
    >>> _ = st.reload(0)
    >>> gx = st.backward_input(0, torch.ones_like(out)); st.backward_weight(0)
    >>> ref = x.clone().requires_grad_()
    >>> g = [p.grad.clone() for p in net.parameters()]
    >>> net.zero_grad(); net(ref).sum().backward()
    >>> torch.allclose(gx, ref.grad) and all(torch.allclose(a, p.grad) for a, p in
    ...                                       zip(g, net.parameters()))
    True
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeblocks.errors import PipeblocksError, SpecError
from pipeblocks.ir.moves import Move, MoveKind
from pipeblocks.ir.offload import with_moves
from pipeblocks.ir.schedule import Schedule
from pipeblocks.runtime.emulate import EmulatedStage, emulated_sleep
from pipeblocks.runtime.stage import Stage
from pipeblocks.runtime.tree import flatten

__all__ = ["Move", "with_moves", "OffloadStage", "OffloadEmulated", "offload_class", "emulated_class", "run_move",
           "pooled_bytes", "set_link", "emulated_schedule"]

_lock = threading.Lock()
_queues: dict[str, ThreadPoolExecutor] = {}


def _queue(name: str) -> ThreadPoolExecutor:
    """One worker per direction for the process (a rank's host link)."""
    with _lock:
        if name not in _queues:
            _queues[name] = ThreadPoolExecutor(1, thread_name_prefix=f"pb-{name}")
        return _queues[name]


@dataclass(slots=True)
class _Pool:
    """What one F saved: the moved tensors (device or host copies) and their bytes."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    saved: int = 0  # every saved storage once (parameters aside): what F holds
    moved: int = 0  # the storages that move (the stage input stays)
    on_host: bool = False
    event: Any = None  # CUDA: the reload's event


@dataclass(frozen=True, slots=True)
class _Handle:
    pool: _Pool
    index: int


class _Offloading:
    """The offload half shared by real and emulated stages (see the module)."""

    link_bps: float | None = None
    _moving: dict[int, Future[None]]

    def _charge(self, mb: int, nbytes: int, kind: MoveKind) -> None:
        """Sleep bytes / bandwidth on the direction's side thread (after the offload, for a
        reload); the B waits for the reload's."""
        if not self.link_bps:
            return
        seconds = nbytes / self.link_bps
        prior = self._moving.get(mb)

        def run() -> None:
            if prior is not None:
                prior.result()
            emulated_sleep(seconds)

        self._moving[mb] = _queue(kind.value).submit(run)

    def offload(self, mb: int) -> int:
        raise NotImplementedError

    def reload(self, mb: int) -> int:
        raise NotImplementedError

    def _wait(self, mb: int) -> None:
        fut = self._moving.pop(mb, None)
        if fut is not None:
            fut.result()


class OffloadStage(_Offloading, Stage):
    """A :class:`Stage` whose saved tensors can move to a host pool between F and B."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pools: dict[int, _Pool] = {}
        self._moving = {}
        self._fixed = {t.untyped_storage().data_ptr()
                       for t in [*self.module.parameters(), *self.module.buffers()]}

    def forward(self, mb: int, x: Any, target: Any = None, scale: float = 1.0,
                side: Mapping[str, Any] | None = None) -> Any:
        pool = self._pools[mb] = _Pool()
        keep = {t.untyped_storage().data_ptr() for t in _leaves(x) + _leaves(side)}

        def pack(t: torch.Tensor) -> Any:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in self._fixed:
                return t
            if ptr not in pool.seen:
                pool.seen.add(ptr)
                pool.saved += storage.nbytes()
                pool.moved += 0 if ptr in keep else storage.nbytes()
            if ptr in keep:
                return t
            pool.tensors.append(t)
            return _Handle(pool, len(pool.tensors) - 1)

        def unpack(h: Any) -> torch.Tensor:
            if isinstance(h, torch.Tensor):
                return h
            if h.pool.on_host:
                raise PipeblocksError(f"stage {self.stage}: a backward read tensors still in "
                                      f"host memory (a reload missing before the B)")
            if h.pool.event is not None:
                torch.cuda.current_stream().wait_event(h.pool.event)
            return h.pool.tensors[h.index]

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return super().forward(mb, x, target, scale, side)

    def offload(self, mb: int) -> int:
        """Copy microbatch ``mb``'s pool to host memory, drop the device copies; the bytes
        moved off the device."""
        pool = self._get_pool(mb, "offload")
        if pool.tensors and pool.tensors[0].is_cuda:  # pragma: no cover - no CUDA here
            stream = _side_stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                host = [_pinned_copy(t) for t in pool.tensors]
        else:
            host = [t.detach().clone() for t in pool.tensors]
        pool.tensors, pool.on_host = host, True
        self._charge(mb, pool.moved, MoveKind.OFFLOAD)
        return pool.moved

    def reload(self, mb: int) -> int:
        """Copy microbatch ``mb``'s pool back to the device; the bytes moved on."""
        pool = self._get_pool(mb, "reload")
        if not pool.on_host:
            raise PipeblocksError(f"stage {self.stage}: reload of microbatch {mb} before its "
                                  f"offload")
        device = next((p.device for p in self.module.parameters()), torch.device("cpu"))
        if device.type == "cuda":  # pragma: no cover - no CUDA here
            stream = _side_stream()
            with torch.cuda.stream(stream):
                pool.tensors = [t.to(device, non_blocking=True) for t in pool.tensors]
                pool.event = torch.cuda.Event()
                pool.event.record(stream)
        else:
            pool.tensors = [t.to(device) for t in pool.tensors]
        pool.on_host = False
        self._charge(mb, pool.moved, MoveKind.RELOAD)
        return pool.moved

    def device_bytes(self, mb: int) -> int:
        """What microbatch ``mb``'s F holds on the device now (the saved storages)."""
        pool = self._pools.get(mb)
        return 0 if pool is None else pool.saved - (pool.moved if pool.on_host else 0)

    def host_bytes(self, mb: int) -> int:
        pool = self._pools.get(mb)
        return pool.moved if pool is not None and pool.on_host else 0

    def backward_input(self, mb: int, grad_out: Any) -> Any:
        self._wait(mb)
        return super().backward_input(mb, grad_out)

    def backward(self, mb: int, grad_out: Any) -> Any:
        self._wait(mb)
        out = super().backward(mb, grad_out)
        self._pools.pop(mb, None)
        return out

    def backward_weight(self, mb: int) -> None:
        super().backward_weight(mb)
        self._pools.pop(mb, None)

    def _get_pool(self, mb: int, what: str) -> _Pool:
        pool = self._pools.get(mb)
        if pool is None:
            raise PipeblocksError(f"stage {self.stage}: {what} of microbatch {mb} before its F")
        return pool


class OffloadEmulated(_Offloading, EmulatedStage):
    """An :class:`EmulatedStage` whose moves charge the bytes of its output on the link."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._moving = {}

    def offload(self, mb: int) -> int:
        self._charge(mb, self.out.numel() * self.out.element_size(), MoveKind.OFFLOAD)
        return 0

    def reload(self, mb: int) -> int:
        self._charge(mb, self.out.numel() * self.out.element_size(), MoveKind.RELOAD)
        return 0

    def backward_input(self, mb: int, grad_out: Any) -> Any:
        self._wait(mb)
        return super().backward_input(mb, grad_out)

    def backward(self, mb: int, grad_out: Any) -> Any:
        self._wait(mb)
        return super().backward(mb, grad_out)


def _leaves(x: Any) -> list[torch.Tensor]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [x]
    return list(flatten(x)[0])


def _side_stream() -> Any:  # pragma: no cover - no CUDA here
    global _stream
    if _stream is None:
        _stream = torch.cuda.Stream()
    return _stream


_stream: Any = None


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - no CUDA here
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def offload_class(schedule: Schedule, stage: int) -> type[Stage] | None:
    """:class:`OffloadStage` where ``stage`` has offloaded pairs, else None."""
    off = schedule.offload
    return OffloadStage if off is not None and stage in off.stages() else None


def emulated_class(schedule: Schedule, stage: int) -> type[EmulatedStage]:
    """The emulated runner class for ``stage``: :class:`OffloadEmulated` where it offloads."""
    off = schedule.offload
    return OffloadEmulated if off is not None and stage in off.stages() else EmulatedStage


def set_link(runners: Mapping[int, Any], gb_per_s: float | None) -> None:
    """``--emulate-link GB/s``: every offloading runner charges its copies' time."""
    for r in runners.values():
        if isinstance(r, _Offloading):
            r.link_bps = None if gb_per_s is None else gb_per_s * 1e9


def pooled_bytes(runner: object, mb: int) -> int:
    """What an :class:`OffloadStage`'s F saved for ``mb`` (its hooks hide it from the
    executor's counter); 0 for any other runner."""
    return runner.device_bytes(mb) if isinstance(runner, OffloadStage) else 0


def run_move(ex: Any, st: Any, op: Move) -> None:
    """The executor's ``offload``/``reload`` op; with ``measure_memory`` the moved bytes leave
    (or rejoin) the step's live bytes and the pair's hold."""
    runner = ex.runners[op.stage]
    if not isinstance(runner, _Offloading):
        raise SpecError(f"stage {op.stage} runs {type(runner).__name__}, which cannot "
                        f"{op.kind.value}; give the executor modules (or OffloadStage "
                        f"runners) for offloaded stages")
    moved = runner.offload(op.mb) if op.kind is MoveKind.OFFLOAD else -runner.reload(op.mb)
    if ex.measure_memory and moved:
        k = (op.stage, op.mb)
        st.held[k] = st.held.get(k, 0) - moved
        st.live -= moved
        st.peak = max(st.peak, st.live)


def emulated_schedule(plan: Any) -> Schedule:
    """The plan's schedule as the simulator should time an emulated run (``--emulate-ms``,
    ``--emulate-link``): its offload link is the emulated one, in stage-activations per ms
    (:class:`OffloadEmulated` moves its output's bytes per copy; UniformCosts hold 1 per F)."""
    schedule, opts = plan.schedule, plan.options
    if schedule.offload is None or not opts.emulate_link:
        return schedule
    from pipeblocks.ir.moves import OffloadLink
    from pipeblocks.ir.offload import with_offload

    shape = plan.model.activation_shape(opts.microbatch_size)
    nbytes = 4 * math.prod(shape)  # float32, as the emulated stages send
    copy_ms = nbytes / (opts.emulate_link * 1e9) * 1e3
    return with_offload(schedule, sorted(schedule.offload.pairs), OffloadLink(1.0 / copy_ms))
