"""Fault handling: a rank that fails stops every other rank within a bounded time, never a hang.

Each rank runs a :class:`Guard`, a daemon thread with its own connection to the rendezvous
store (the launcher's, or torchrun's agent store):

- A rank whose pass raises posts one line under a fault key, e.g. ``rank 2 failed in 2F3:
  RuntimeError: boom``, and exits non-zero. Only the first fault is kept (the root cause).
- Every guard polls the key (every ``poll`` seconds). When it appears, the guard prints why
  this rank stops and where it was (``rank 1 stops in 1B3 (waiting for grad 2->1 #3 from rank
  2): rank 2 failed in 2F3: ...``) and ends the process with exit code 1: its main thread may
  be blocked inside a transport call that nothing else would interrupt.
- A rank that waits longer than ``timeout`` seconds for one message posts a timeout fault. It
  follows the chain of waiting ranks (each guard publishes where its rank is) to the one that
  makes no progress: ``rank 1 is stuck in 1F2: rank 2 timed out after 60 s in 2F2 waiting for
  act 1->2 #2 from rank 1``. So a rank that hangs, or dies without a word, stops the others.
  See the note "frozen rank" for a rank whose whole process stops.
  The launcher also posts ``rank 2 died (killed by signal 9 (SIGKILL))`` when a process ends
  badly.
- A lost store (the launcher is gone) stops the rank as well.

Note "one line per rank": a rank that stops prints exactly one line, whichever of its main
thread and its guard reports first (:meth:`Guard.report`; the other stays silent), in a single
``write`` so that ranks sharing one stderr pipe never splice their lines (``print`` writes the
text and the newline separately when stderr is unbuffered, e.g. under ``PYTHONUNBUFFERED``).
Only the line of the rank the root cause names carries it in full (its detail and fix); every
other rank says where it stopped and the cause's :func:`headline`, who failed where (``rank 0
stops in 0F3 (waiting for act 2->3 #3 from rank 2): rank 2 failed in 2F3``). The launcher
repeats the root cause in full as the run's last line.

Note "frozen rank": a process that stops as a whole (SIGSTOP, a swapped-out or wedged host)
stops its guard too, so the place it last published is stale: often "waiting for rank 1", a
wait that was real and brief when published. Following such a stale state made a frozen rank
look like a cycle (``ranks 1 -> 2 -> 1 wait on each other``). So each guard also publishes a
heartbeat (a count, every ``beat`` seconds, with its clock time), and a guard that times out
reads the heartbeats of the ranks on its chain (every rank, in a collective) twice, ``4 *
beat`` apart: a rank whose count did not move (the one that stopped longest ago, if several)
is named as the one that is stuck, with its last pass and how long ago its last heartbeat was
(``rank 2 is stuck in 2B1 (its last heartbeat was 6.1 s ago, in 2B1; the process is frozen or
stopped)``); only ranks that all still beat can be a deadlock.

    >>> describe_exit(-9), describe_exit(3)
    ('killed by signal 9 (SIGKILL)', 'exit code 3')
    >>> headline("rank 1 failed in loading the checkpoint c/step-3: EOFError; it is damaged")
    'rank 1 failed in loading the checkpoint c/step-3'
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, NoReturn

import torch.distributed as dist

__all__ = ["Guard", "RankFailure", "FAULT_KEY", "describe_exit", "headline", "post_fault",
           "store_client", "write_error", "pass_failure"]

FAULT_KEY = "pipeblocks/fault"
_STATE = "pipeblocks/state/"  # + rank: "<where>\t<rank waited on, or -1>"


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


def headline(cause: str) -> str:
    """Who failed and where: a fault message up to its first ``": "``.

    Fault messages read ``<who> <where>: <detail>`` (``rank 2 failed in 2F3: RuntimeError:
    boom``); one without a detail (``rank 2 died (killed by signal 9 (SIGKILL))``) is its own
    headline.
    """
    return cause.split(": ", 1)[0]


def write_error(message: str) -> None:
    """``pipeblocks: error: <message>`` on stderr in one ``write`` (note "one line per rank")."""
    sys.stderr.flush()
    data = f"pipeblocks: error: {message}\n".encode(errors="replace")
    # a pipe write of at most PIPE_BUF (4096) bytes is atomic: keep lines below that
    if len(data) > 4000:
        data = data[:3996] + b"...\n"
    try:
        os.write(2, data)
    except OSError:  # no stderr left to tell: the exit code still says it
        pass


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
        self, rank: int, timeout: float = 60.0, poll: float = 0.1, store: dist.Store | None = None,
        beat: float = 0.5,
    ) -> None:
        self.rank = rank
        self.timeout = timeout
        self.poll = poll
        self.beat = beat  # seconds between heartbeats (note "frozen rank")
        self._beats = 0
        self._beat_at = -math.inf
        self.store = store if store is not None else store_client(max(timeout, 10.0))
        self.where = "start-up"  # the pass or phase the main thread is in
        # (what, since, peer) while the main thread is blocked on a message
        self._wait: tuple[str, float, int] | None = None
        self._state = ""
        self._stop = threading.Event()
        self._reported = threading.Lock()  # held by the one thread that reports and exits
        self._thread = threading.Thread(target=self._watch, name="pipeblocks-guard", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def waiting(self, what: str, peer: int = -1) -> Iterator[None]:
        """Mark the main thread as blocked on ``what`` (a message from rank ``peer``)."""
        self._wait = (what, time.monotonic(), peer)
        try:
            yield
        finally:
            self._wait = None

    def fail(self, message: str) -> str:
        """Post this rank's fault (unless another is already posted); return the root cause.

        The main thread then reports and exits by itself, so the watchdog stands down.
        """
        self.stand_down()
        return post_fault(self.store, message)

    def stand_down(self) -> None:
        """The main thread reports the fault and exits by itself: stop watching."""
        self._stop.set()

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

    def report(self, message: str, code: int = 1, linger: float = 0.0) -> NoReturn:
        """Print this rank's one line about ``message`` and end the process with ``code``.

        ``message`` is this rank's account of the fault (it ends with the root cause when that
        was posted); the line follows note "one line per rank". ``linger`` seconds before the
        exit let the other guards read a fault this rank just posted. If the other thread of
        this process reports first, this call waits for that thread to end the process.
        """
        self.stand_down()
        if not self._reported.acquire(blocking=False):
            threading.Event().wait()  # the other thread is printing and calls os._exit
        write_error(self._line(message, self.posted()))
        sys.stdout.flush()
        if linger > 0:
            time.sleep(linger)
        os._exit(code)

    def _line(self, message: str, cause: str) -> str:
        """This rank's line for ``message``, given the posted root ``cause`` (or "")."""
        if not cause or cause.startswith(f"rank {self.rank} "):
            return cause or message  # no posted cause, or this rank's own: say it in full
        if message.endswith(cause) and len(message) > len(cause):
            return message[: len(message) - len(cause)] + headline(cause)
        return f"rank {self.rank} stops in {self._where_text()}: {headline(cause)}"

    def _where_text(self) -> str:
        wait = self._wait
        return self.where + (f" (waiting for {wait[0]})" if wait else "")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.poll + 1)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._publish()
                cause = ""
                if self.store.check([FAULT_KEY]):
                    value = self.store.get(FAULT_KEY)
                    cause = value.decode() if isinstance(value, bytes) else str(value)
            except Exception as e:  # the store is gone: the launcher (or rank 0's host) died
                lost = f"lost the rendezvous store ({type(e).__name__}: {e})"
                if not self._stop.is_set():  # (a lost store is no posted cause: said in full)
                    self._exit(f"rank {self.rank} stops in {self._where_text()}: {lost}", "")
                return
            if not cause:
                wait = self._wait
                if wait is None or time.monotonic() - wait[1] <= self.timeout:
                    continue
                cause = post_fault(self.store, self._timeout_message(*wait))
            if self._stop.is_set():  # stopped, or the main thread failed and reports itself
                return
            self._exit(f"rank {self.rank} stops in {self._where_text()}: {cause}", cause)
            return

    def _publish(self) -> None:
        """Tell the other guards where this rank is (read when one of them times out), with a
        heartbeat at least every ``beat`` seconds (note "frozen rank")."""
        wait = self._wait
        state = f"{self.where}\t{wait[2] if wait else -1}"
        now = time.monotonic()
        if state != self._state or now - self._beat_at >= self.beat:
            self._beats += 1
            self.store.set(f"{_STATE}{self.rank}", f"{state}\t{self._beats}\t{time.time():.3f}")
            self._state, self._beat_at = state, now

    def _read_state(self, rank: int) -> tuple[str, int, int, float] | None:
        """(where, rank waited on or -1, heartbeat count, its clock) as ``rank`` published."""
        if not self.store.check([f"{_STATE}{rank}"]):
            return None
        where, nxt, beats, wall = self.store.get(f"{_STATE}{rank}").decode().split("\t")
        return where, int(nxt), int(beats), float(wall)

    @staticmethod
    def _world() -> int:
        return dist.get_world_size() if dist.is_initialized() else 0

    def frozen(self, ranks: list[int] | None = None) -> str:
        """``rank 2 is stuck in 2F1 (its last heartbeat ...)`` for the rank of ``ranks``
        (default: every other rank) whose heartbeat stopped longest ago, or "" (note "frozen
        rank"). The oldest, not the first: on a loaded host a live rank's guard may miss a
        beat or two, while the frozen one stopped before this rank began to wait."""
        if ranks is None:
            ranks = [r for r in range(self._world()) if r != self.rank]
        found = self._frozen(ranks)
        if not found:
            return ""
        rank, (where, _, _, wall) = min(found.items(), key=lambda kv: kv[1][3])
        return (f"rank {rank} is stuck in {where} (its last heartbeat was "
                f"{time.time() - wall:.1f} s ago, in {where}; the process is frozen or stopped)")

    def root_cause(self, message: str) -> str:
        """After this rank's transport error (``message``): the fault a peer or the launcher
        posts within 2 s (a rank died), else the lost store (the launcher died), else a frozen
        rank (before ``message``), else ``message``; posted (if the store is there), and
        returned."""
        cause = self.posted(within=2.0)
        if cause:
            return cause
        try:
            self.store.check([FAULT_KEY])
        except Exception as e:  # the store is gone (the launcher died): that is the cause,
            # whichever of this rank's threads meets it first (the watchdog says the same)
            return f"lost the rendezvous store ({type(e).__name__}: {e})"
        try:
            frozen = self.frozen()
        except Exception:  # the store is gone: say what this rank saw
            frozen = ""
        return self.fail(f"{frozen}: {message}" if frozen else message)

    def _frozen(self, ranks: list[int]) -> dict[int, tuple[str, int, int, float]]:
        """Those of ``ranks`` whose heartbeat does not move in ``4 * beat`` seconds, with the
        state each last published."""
        before = {r: self._read_state(r) for r in ranks}
        time.sleep(4 * self.beat)
        out = {}
        for r in ranks:
            state, old = self._read_state(r), before[r]
            if state is not None and old is not None and state[2] == old[2]:
                out[r] = state
        return out

    def _timeout_message(self, what: str, since: float, peer: int) -> str:
        """Follow the chain of waiting ranks to the one that makes no progress."""
        waited = f"rank {self.rank} timed out after {self.timeout:g} s in {self.where} " \
                 f"waiting for {what}"
        chain, rank, where = [self.rank], peer, ""
        try:
            while rank >= 0 and rank not in chain:
                chain.append(rank)
                state = self._read_state(rank)
                if state is None:
                    break
                where, rank = state[0], state[1]
            # a collective (no one peer): any rank may be the frozen one
            frozen = self.frozen(chain[1:] or None)
            if frozen:
                return f"{frozen}: {waited}"
        except Exception:
            return waited
        if rank >= 0 and rank in chain:
            ring = " -> ".join(map(str, chain[chain.index(rank):] + [rank]))
            return f"ranks {ring} wait on each other (a deadlock): {waited}"
        stuck = chain[-1]
        if stuck == self.rank or not where:
            return waited
        return f"rank {stuck} is stuck in {where}: {waited}"

    def _exit(self, message: str, cause: str) -> None:
        """Report from the watchdog thread (print, not log: the process ends at once and the
        launcher shows stderr as is); see :meth:`report`."""
        if not self._reported.acquire(blocking=False):
            return  # the main thread reports and ends the process
        write_error(self._line(message, cause))
        sys.stdout.flush()
        os._exit(1)


def pass_failure(rank: int, guard: Guard | None, where: str, e: Exception,
                 peer: tuple[Any, str] | None) -> RankFailure:
    """The error a rank stops with when ``where`` (a pass, the handshake) raised ``e``, naming
    the rank that failed first; ``peer``: (rank, message) it was waiting for, if any.

    A transport error while waiting on a peer usually means the peer died: give the launcher
    (which watches the processes) a moment to post that root cause.
    """
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    detail = f"{type(e).__name__}: {text[:300]}"
    if peer is None:
        msg = f"rank {rank} failed in {where}: {detail}"
        return RankFailure(guard.fail(msg) if guard is not None else msg)
    other, what = peer
    here = f"rank {rank} stops in {where} (waiting for {what})"
    msg = f"rank {rank} lost rank {other} in {where} (waiting for {what}): {detail}"
    if guard is None:
        return RankFailure(msg)
    cause = guard.root_cause(msg)  # a posted fault, a frozen rank, a lost store, or msg
    guard.stand_down()
    return RankFailure(cause if cause == msg else f"{here}: {cause}")
