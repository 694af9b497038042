"""Profile real stages: per-stage F, B, W times and activation memory, as a costs file.

The paper's loop is *profile, then schedule for what was measured*. :func:`profile_stages`
runs each stage of a model alone, one after the other in this process (CPU or one GPU), on
one microbatch whose input is made by the stages before it, through the same
:class:`~pipeblocks.runtime.stage.Stage` wrapper the executor uses:

- **times** (milliseconds): the median over ``reps`` of F, B and W of the split stage, and of
  the fused backward BW, alternated so that a drift of the machine hits all of them alike.
  ``clock="wall"`` reads ``time.perf_counter`` (what a pipeline rank waits for; on CUDA after
  a ``synchronize``), ``clock="cpu"`` reads ``time.thread_time`` (CPU only; immune to other
  processes on a busy machine).
- **idle** (a note): passes timed back to back find the caches warm and the core awake; in a
  pipeline a pass often follows a wait (a bubble, a transfer), and on some machines the same
  work then takes longer (on the 2-core VM of docs/benchmarks.md, 1.1x after 5 ms idle and
  1.6x after 20 ms). ``idle_ms`` sleeps before every timed pass to measure that case.
- **memory** (bytes): ``mem_f`` is what F saves for backward, counted by saved-tensor hooks
  (each storage once, parameters left out); ``mem_w`` is the part of it still held after B,
  until W frees it: the hooks hand autograd a small holder per saved tensor and keep a weak
  reference to it, so a holder that is gone after B is memory B released.

:meth:`Profile.costs` is the per-stage costs file (docs/simulator.md) that ``simulate``,
``search`` and ``draw`` read with ``--costs``; ``pipeblocks profile`` writes it for the small
GPT (:func:`pipeblocks.models.profile.profile_small_gpt`).

``input_path=True`` also times the input path alone (``autograd.grad`` of the stage's output
with respect to its input, the whole graph): the least B can cost, so BW minus it is the least
W can cost, and ``(b + w) / bw`` is what the B/W split costs. ``direct=False`` runs W through
autograd engine calls only, without the kernels of :mod:`pipeblocks.runtime.direct`.

    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> stages = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()) for _ in range(2)]
    >>> prof = profile_stages(stages, torch.randn(4, 8), torch.zeros(4, 8),
    ...                       torch.nn.functional.mse_loss, reps=3, warmup=1)
    >>> [(s.stage, s.mem_f, s.mem_w) for s in prof.stages]
    [(0, 256, 128), (1, 384, 128)]

Each stage saves its input x (4 x 8 floats: 128 bytes, for the weight gradient) and tanh's
output (128 bytes); the last one also the loss target (128 bytes). After B only x is left,
until W.

    >>> from pipeblocks.sim import parse_costs
    >>> parse_costs(prof.costs()).memory_unit
    'bytes'
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.runtime.stage import LossFn, Stage

__all__ = ["StageProfile", "Profile", "profile_stages", "saved_memory"]

Clock = Literal["wall", "cpu"]


@dataclass(frozen=True, slots=True)
class StageProfile:
    """One stage: median milliseconds of one microbatch's passes, and its activation bytes."""

    stage: int
    f: float
    b: float
    w: float
    bw: float  # the fused backward, for comparison with b + w
    mem_f: int  # bytes F saves for backward
    mem_w: int  # bytes still held after B, freed by W
    input_only: float = 0.0  # the input path alone (autograd.grad w.r.t. the input); 0: not timed

    @property
    def split_over_fused(self) -> float:
        """(B + W) / BW: what the B/W split costs over the ordinary backward."""
        return (self.b + self.w) / self.bw if self.bw > 0 else float("nan")


@dataclass(frozen=True, slots=True)
class Profile:
    """Every stage's profile, and how it was measured."""

    stages: tuple[StageProfile, ...]
    device: str
    clock: Clock
    reps: int
    comm_ms: float = 0.0

    def costs(self) -> dict[str, Any]:
        """The per-stage costs-file object: times in ms, memory in bytes."""
        return {
            "stages": [{"f": s.f, "b": s.b, "w": s.w, "mem_f": float(s.mem_f),
                        "mem_w": float(s.mem_w)} for s in self.stages],
            "comm": self.comm_ms,
            "time_unit": "ms",
            "memory_unit": "bytes",
        }

    def summary(self) -> dict[str, Any]:
        """Everything, JSON-ready (what ``pipeblocks profile --json`` prints)."""
        return {
            "device": self.device, "clock": self.clock, "reps": self.reps,
            "comm_ms": self.comm_ms, "time_unit": "ms", "memory_unit": "bytes",
            "stages": [{"stage": s.stage, "f": s.f, "b": s.b, "w": s.w, "bw": s.bw,
                        "split_over_fused": s.split_over_fused, "mem_f": s.mem_f,
                        "mem_w": s.mem_w} for s in self.stages],
        }


class _Held:
    """What autograd keeps for one saved tensor while the hooks are on (see saved_memory)."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


@contextmanager
def saved_memory(skip: set[int]) -> Iterator[Callable[[], int]]:
    """Record what autograd saves in the block; yields a function giving the bytes still held.

    Each storage counts once; storages whose pointer is in ``skip`` (the parameters) do not
    count. The function can be called after the block: it counts the storages of which some
    saved tensor is still held by a graph.
    """
    refs: list[tuple[weakref.ref[_Held], int, int]] = []

    def pack(t: torch.Tensor) -> _Held:
        storage = t.untyped_storage()
        held = _Held(t.detach())  # not t: an output keeps its node, a cycle autograd never frees
        refs.append((weakref.ref(held), storage.data_ptr(), storage.nbytes()))
        return held

    def unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def live() -> int:
        sizes = {ptr: n for ref, ptr, n in refs if ref() is not None and ptr not in skip}
        return sum(sizes.values())

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield live


def _stage_inputs(
    stages: Sequence[nn.Module], batch: torch.Tensor
) -> list[torch.Tensor]:
    """The input of every stage for one microbatch, and the last stage's output."""
    xs = [batch]
    with torch.no_grad():
        for st in stages:
            xs.append(st(xs[-1]))
    return xs


def profile_stages(
    stages: Sequence[nn.Module],
    batch: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    *,
    reps: int = 10,
    warmup: int = 2,
    clock: Clock = "wall",
    comm_ms: float = 0.0,
    idle_ms: float = 0.0,
    direct: bool = True,
    input_path: bool = False,
) -> Profile:
    """F, B, W, BW times and activation memory of every stage for one microbatch.

    ``stages`` in forward order (the last applies ``loss_fn`` to its output and ``targets``);
    ``batch`` is one microbatch of the first stage's input, on the stages' device.
    ``idle_ms``: sleep that long before each timed pass (see the note "idle").
    """
    if reps < 1 or warmup < 0 or idle_ms < 0:
        raise SpecError(f"reps must be >= 1, warmup and idle_ms >= 0 (got reps={reps}, "
                        f"warmup={warmup}, idle_ms={idle_ms})")
    device = batch.device
    if clock == "cpu" and device.type != "cpu":
        raise SpecError(f"clock 'cpu' reads this thread's CPU time, which misses GPU work "
                        f"(device {device}); use clock 'wall'")
    cuda = device.type == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        return time.thread_time() if clock == "cpu" else time.perf_counter()

    n = len(stages)
    xs = _stage_inputs(stages, batch)
    out = []
    for s, module in enumerate(stages):
        last = s == n - 1
        grad = None if last else torch.full_like(xs[s + 1], 1e-3)
        split = Stage(module, s, n, loss_fn, split=True, direct=direct)
        fused = Stage(module, s, n, loss_fn, split=False)
        times: dict[str, list[float]] = {"f": [], "b": [], "w": [], "bw": [], "inp": []}
        def timed(call: Callable[..., Any], *args: Any) -> float:
            if idle_ms:
                time.sleep(idle_ms / 1e3)  # see the note "idle" in the module docs
            t0 = now()
            call(*args)
            return now() - t0

        for rep in range(warmup + reps):
            fused.forward(0, xs[s], targets)  # F is timed on the split stage below
            bw = timed(fused.backward, 0, grad)
            f = timed(split.forward, 0, xs[s], targets)
            b = timed(split.backward_input, 0, grad)
            w = timed(split.backward_weight, 0)
            inp = 0.0
            if input_path and s > 0:  # stage 0's input is the batch: no gradient to take
                root, x = _input_graph(module, xs[s], targets, last, loss_fn)
                inp = timed(torch.autograd.grad, root, x, grad)
            if rep >= warmup:
                for key, value in (("bw", bw), ("f", f), ("b", b), ("w", w), ("inp", inp)):
                    times[key].append(value)
        mem_f, mem_w = _memory(split, module, xs[s], targets, grad)
        module.zero_grad(set_to_none=True)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        out.append(StageProfile(s, ms["f"], ms["b"], ms["w"], ms["bw"], mem_f, mem_w,
                                ms["inp"]))
    return Profile(tuple(out), str(device), clock, reps, comm_ms)


def _input_graph(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, last: bool,
                 loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh graph of the stage (root, input), built untimed, to time the input path alone."""
    x = x.detach().requires_grad_(True)
    y = module(x)
    return (loss_fn(y, targets) if last else y), x


def _memory(
    stage: Stage, module: nn.Module, x: torch.Tensor, targets: torch.Tensor,
    grad: torch.Tensor | None,
) -> tuple[int, int]:
    """(bytes saved by F, bytes still held after B) of one microbatch; W releases the rest."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    with saved_memory(params) as held:
        stage.forward(0, x, targets)
    mem_f = held()
    stage.backward_input(0, grad)
    mem_w = held()
    stage.backward_weight(0)
    return mem_f, mem_w
