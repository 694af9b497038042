"""Emulated stages: every pass sleeps a fixed time instead of computing.

With ``--emulate-ms X`` each F, B and W of a stage sleeps X ms (BW 2X) and sends tensors of
the real activation shape, so the executor's own overhead and the transport are measured
against the simulator's prediction on a machine with fewer cores than ranks (sleeping ranks do
not compete for CPU).

    >>> import torch
    >>> st = EmulatedStage(stage=1, num_stages=4, ms=0.0, out_shape=(2, 3))
    >>> st.forward(0, torch.zeros(2, 3)).shape
    torch.Size([2, 3])
    >>> st.backward_input(0, torch.ones(2, 3)).sum().item()
    0.0
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["EmulatedStage", "emulated_sleep"]

_SPIN = 5e-5
"""Seconds an emulated pass spins before its deadline instead of sleeping (see ``_sleep``)."""


def _tight_timer_slack() -> bool:
    """Ask Linux to wake this thread's sleeps within 1 ns of their deadline, not 50 µs later.

    A sleep then overshoots by about 20 µs instead of 70 (measured on this project's 2-core
    machine), so an emulated pass needs only a short spin at its end; the spin burns CPU that
    the other ranks need when ranks outnumber cores. False where unsupported (the pass then
    spins longer).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(29, 1, 0, 0, 0)) == 0  # PR_SET_TIMERSLACK, 1 ns
    except (OSError, AttributeError):
        return False


_thread = threading.local()


def emulated_sleep(seconds: float) -> None:
    """Last ``seconds`` as exactly as the OS allows and with as little CPU as possible.

    A sleep wakes up late (about 20 µs with the tight timer slack, 70-100 µs without): sleep to
    shortly before the deadline, then spin, so that a pass lasts X ms as in the simulator, not
    X plus the wake-up delay. The timer slack is set once per thread (it is a thread's
    setting). Benchmarks use this for both executors they compare.
    """
    spin = getattr(_thread, "spin", None)
    if spin is None:
        spin = _thread.spin = _SPIN if _tight_timer_slack() else 4 * _SPIN
    deadline = time.perf_counter() + seconds
    rest = deadline - time.perf_counter() - spin
    if rest > 0:
        time.sleep(rest)
    while time.perf_counter() < deadline:
        pass


class EmulatedStage:
    """A stand-in for :class:`~pipeblocks.runtime.stage.Stage` that sleeps ``ms`` per pass."""

    def __init__(
        self,
        stage: int,
        num_stages: int,
        ms: float,
        out_shape: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        extra: int = 0,
    ) -> None:
        self.stage = stage
        self.num_stages = num_stages
        self.seconds = ms / 1000.0
        self.split = True
        self.out = torch.zeros(tuple(out_shape), dtype=dtype, device=device)
        # ``extra``: that many more tensors travel with the output, without gradients (token
        # ids and masks of the output's leading shape), as a tuple
        lead = tuple(out_shape)[:2]
        self.extras = tuple(torch.zeros(lead, dtype=torch.int64 if k % 2 else torch.bool,
                                        device=device) for k in range(extra))
        self._pending: set[int] = set()
        self._grad_in: Any = None

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    def pending(self) -> int:
        return len(self._pending)

    def out_meta(self, x: Any) -> tuple[tuple[int, ...], torch.dtype]:
        return tuple(self.out.shape), self.out.dtype

    def probe(self, x: Any, side: Any = None) -> Any:
        """The output as the handshake sees it (the first tensor needs a gradient)."""
        out = self.out.detach().requires_grad_(self.out.is_floating_point())
        return (out, *self.extras) if self.extras else out

    def _sleep(self, factor: float = 1.0) -> None:
        emulated_sleep(self.seconds * factor)

    def forward(
        self, mb: int, x: torch.Tensor, target: Any = None, scale: float = 1.0,
        side: Any = None,
    ) -> torch.Tensor:
        self._sleep()
        self._pending.add(mb)
        if self._grad_in is None and not self.is_first:
            g = torch.zeros_like(x[0] if isinstance(x, tuple) else x)
            self._grad_in = [g] if isinstance(x, tuple) else g  # one per tensor with a grad
        if self.is_last:
            return torch.zeros((), device=self.out.device)
        return (self.out, *self.extras) if self.extras else self.out

    def evaluate(self, x: torch.Tensor, target: Any = None, side: Any = None) -> torch.Tensor:
        self._sleep()
        return torch.zeros((), device=self.out.device) if self.is_last else self.out

    def backward_input(self, mb: int, grad_out: Any) -> Any:
        self._sleep()
        return self._grad_in

    def backward_weight(self, mb: int) -> None:
        self._sleep()
        self._pending.discard(mb)

    def backward(self, mb: int, grad_out: Any) -> Any:
        self._sleep(2.0)
        self._pending.discard(mb)
        return self._grad_in
