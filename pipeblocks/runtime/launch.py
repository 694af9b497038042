"""Start P local rank processes, as torchrun would, and make sure none outlives a failure.

The launcher hosts the rendezvous store (like torchrun's agent: every rank is a client, so the
store survives any rank) on 127.0.0.1 and a free port, and starts each rank with the usual
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...) and one thread each. It watches
the processes: one that ends badly without having posted a fault gets one posted for it
(``rank 2 died (killed by signal 9 (SIGKILL))``), which stops the others (see
:mod:`pipeblocks.runtime.faults`); whoever is still alive ``grace`` seconds later is killed.

    >>> import sys
    >>> res = launch([sys.executable, "-c", "import os; print(os.environ['RANK'])"], 2,
    ...              capture=True)
    >>> res.codes, [o.strip() for o in res.stdout]
    ((0, 0), ['0', '1'])
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from pipeblocks.runtime.faults import FAULT_KEY, describe_exit, post_fault

__all__ = ["launch", "LaunchResult", "free_port", "rank_env"]


@dataclass(frozen=True, slots=True)
class LaunchResult:
    """Exit codes per rank (negative: killed by that signal), the fault posted (or ""), and,
    with ``capture``, each rank's stdout and stderr."""

    codes: tuple[int, ...]
    fault: str
    seconds: float
    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c == 0 for c in self.codes)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, num_ranks: int, port: int, threads: int = 1) -> dict[str, str]:
    """The torchrun-style environment of one local rank."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(num_ranks),
        "LOCAL_WORLD_SIZE": str(num_ranks),
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        # the launcher hosts the store, as torchrun's agent does: all ranks are clients
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "OMP_NUM_THREADS": str(threads),
    }


def launch(
    command: Sequence[str],
    num_ranks: int,
    *,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
    quiet_ranks: bool = True,
    grace: float = 10.0,
    deadline: float | None = None,
    threads: int = 1,
) -> LaunchResult:
    """Run ``command`` as ranks 0..num_ranks-1 and wait for all of them.

    Without ``capture``, rank 0's stdout and every rank's stderr pass through (other ranks'
    stdout too unless ``quiet_ranks``). ``deadline`` (seconds) bounds the whole run: ranks
    still alive then are killed and a fault is recorded.
    """
    start = time.monotonic()
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=60))
    files: list[tuple[Any, Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    base = dict(os.environ)
    base.update(env or {})
    try:
        for r in range(num_ranks):
            rank_vars = dict(base)
            rank_vars.update(rank_env(r, num_ranks, store.port, threads))
            # c10d logs a lost store (the launcher killed) as a warning with a C++ stack per
            # rank; each rank's guard already says it in one line. A user's setting wins.
            rank_vars.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
            stdout: Any
            stderr: Any
            if capture:
                stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
                files.append((stdout, stderr))
            else:
                stdout = subprocess.DEVNULL if (quiet_ranks and r) else None
                stderr = None
            procs.append(subprocess.Popen(list(command), env=rank_vars, stdout=stdout,
                                          stderr=stderr))
        codes = _watch(procs, store, grace, deadline)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        raise
    fault = ""
    if store.check([FAULT_KEY]):
        fault = store.get(FAULT_KEY).decode()
    outs: list[str] = []
    errs: list[str] = []
    for out, err in files:
        for f, dst in ((out, outs), (err, errs)):
            f.seek(0)
            dst.append(f.read().decode(errors="replace"))
            f.close()
    return LaunchResult(tuple(codes), fault, time.monotonic() - start, tuple(outs), tuple(errs))


def _watch(
    procs: list[subprocess.Popen[bytes]], store: dist.Store, grace: float, deadline: float | None
) -> list[int]:
    start = time.monotonic()
    codes: list[int | None] = [None] * len(procs)
    kill_at: float | None = None
    while any(c is None for c in codes):
        time.sleep(0.05)
        now = time.monotonic()
        for r, p in enumerate(procs):
            if codes[r] is None and (code := p.poll()) is not None:
                codes[r] = code
                if code != 0:
                    post_fault(store, f"rank {r} died ({describe_exit(code)})")
                    kill_at = kill_at if kill_at is not None else now + grace
        if deadline is not None and now > start + deadline and kill_at is None:
            post_fault(store, f"the run passed its deadline of {deadline:.0f} s; stopped")
            kill_at = now + grace
        if kill_at is not None and now > kill_at:
            for r, p in enumerate(procs):
                if codes[r] is None:
                    p.send_signal(signal.SIGKILL)
                    codes[r] = p.wait()
    return [int(c) for c in codes if c is not None]
