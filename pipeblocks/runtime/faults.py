"""Fault handling: a rank that fails stops every other rank within a bounded time, never a hang.

Each rank runs a :class:`Guard`, a daemon thread with its own connection to the rendezvous
store (the launcher's, or torchrun's agent store):

- A rank whose pass raises posts one line under a fault key, e.g. ``rank 2 failed in 2F3:
  RuntimeError: boom``, and exits non-zero. Only the first fault is kept (the root cause).
- Every guard polls the key (every ``poll`` seconds). When it appears, the guard prints why
  this rank stops and where it was (``rank 1 stops in 1B3 (waiting for grad 2->1 #3 from rank
  2): rank 2 failed in 2F3: ...``) and ends the process with exit code 1: its main thread may
  be blocked inside a transport call that nothing else would interrupt.
- A rank that waits longer than ``timeout`` seconds for one message posts a timeout fault
  naming the peer and the transfer, so a rank that hangs, or dies without a word, stops the
  others too. The launcher also posts ``rank r died (signal 9)`` when a process ends badly.
- A lost store (the launcher is gone) stops the rank as well.

    >>> describe_exit(-9), describe_exit(3)
    ('killed by signal 9 (SIGKILL)', 'exit code 3')
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import torch.distributed as dist

__all__ = ["Guard", "RankFailure", "FAULT_KEY", "describe_exit", "post_fault", "store_client"]

log = logging.getLogger(__name__)

FAULT_KEY = "pipeblocks/fault"


class RankFailure(RuntimeError):
    """This rank stops because a rank (maybe itself) failed; the message names it and the pass."""


def describe_exit(code: int) -> str:
    """How a process ended, from its return code (negative: killed by that signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def store_client(timeout: float) -> dist.Store:
    """A new client of the rendezvous store at MASTER_ADDR:MASTER_PORT."""
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ["MASTER_PORT"])
    return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))


def post_fault(store: dist.Store, message: str) -> str:
    """Record ``message`` as the fault unless one is already there; return the one that holds."""
    try:
        got = store.compare_set(FAULT_KEY, "", message)
        return got.decode() if isinstance(got, bytes) else str(got)
    except Exception:  # the store may be gone too; the message still goes to stderr
        return message


class Guard:
    """The watchdog of one rank (see the module docstring)."""

    def __init__(
        self, rank: int, timeout: float = 60.0, poll: float = 0.1, store: dist.Store | None = None
    ) -> None:
        self.rank = rank
        self.timeout = timeout
        self.poll = poll
        self.store = store if store is not None else store_client(max(timeout, 10.0))
        self.where = "start-up"  # the pass or phase the main thread is in
        self._wait: tuple[str, float] | None = None  # (what, since) while blocked on a message
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pipeblocks-guard", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Mark the main thread as blocked on ``what`` (a message from a peer)."""
        self._wait = (what, time.monotonic())
        try:
            yield
        finally:
            self._wait = None

    def fail(self, message: str) -> str:
        """Post this rank's fault (unless another is already posted); return the root cause."""
        return post_fault(self.store, message)

    def posted(self, within: float = 0.0) -> str:
        """The fault posted so far (waiting up to ``within`` seconds for one), or ""."""
        end = time.monotonic() + within
        while True:
            try:
                if self.store.check([FAULT_KEY]):
                    value = self.store.get(FAULT_KEY)
                    return value.decode() if isinstance(value, bytes) else str(value)
            except Exception:
                return ""
            if time.monotonic() >= end:
                return ""
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.poll + 1)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                cause = ""
                if self.store.check([FAULT_KEY]):
                    value = self.store.get(FAULT_KEY)
                    cause = value.decode() if isinstance(value, bytes) else str(value)
            except Exception as e:  # the store is gone: the launcher (or rank 0's host) died
                cause = f"lost the rendezvous store ({type(e).__name__}: {e})"
            if not cause:
                wait = self._wait
                if wait is None or time.monotonic() - wait[1] <= self.timeout:
                    continue
                cause = self.fail(
                    f"rank {self.rank} timed out after {self.timeout:g} s in {self.where} "
                    f"waiting for {wait[0]}"
                )
            if self._stop.is_set():
                return
            self._exit(cause)

    def _exit(self, cause: str) -> None:
        where = self.where + (f" (waiting for {self._wait[0]})" if self._wait else "")
        print(f"pipeblocks: error: rank {self.rank} stops in {where}: {cause}",
              file=sys.stderr, flush=True)
        log.error("rank %d stops in %s: %s", self.rank, where, cause)
        sys.stdout.flush()
        os._exit(1)
