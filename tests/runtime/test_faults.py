"""How a stopping rank reports (pipeblocks.runtime.faults, note "one line per rank"): one whole
line per process, whichever of its two threads reports first, and never spliced with the lines
of other processes writing to the same stderr pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from pipeblocks.runtime.faults import headline

pytestmark = pytest.mark.torch

CAUSE = "rank 2 failed in 2F3: RuntimeError: boom; fix it"

# Forks 30 children at once; each posts a fault (or none) to its own in-memory store, then
# reports from its main thread while its guard (polling every millisecond) races to do the
# same. Every child shares this process's stderr. Child k: k % 3 == 0 another rank's fault,
# 1 its own fault, 2 no fault at all.
RACE = textwrap.dedent(f"""
    import os, random, sys, time
    import torch.distributed as dist
    from pipeblocks.runtime.faults import Guard
    kids = []
    for k in range(30):
        pid = os.fork()
        if pid == 0:
            rank = 2 if k % 3 == 1 else 0
            store = dist.HashStore()
            guard = Guard(rank, timeout=60, poll=0.001, store=store)
            guard.where = f"{{rank}}F3"
            if k % 3 != 2:
                store.set("pipeblocks/fault", {CAUSE!r})
            time.sleep(random.random() * 0.003)
            message = {CAUSE!r} if k % 3 == 1 else f"rank {{rank}} stops in {{rank}}F3: boom"
            if k % 3 == 0:
                message = f"rank 0 stops in 0F3: {CAUSE}"
            guard.report(message, 1)
        kids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids]
    print(codes)
""")


def test_headline_is_who_failed_where() -> None:
    """A fault's headline stops before its detail; a fault without one is its own headline."""
    assert headline(CAUSE) == "rank 2 failed in 2F3"
    assert headline("rank 1 died (killed by signal 9 (SIGKILL))") == \
        "rank 1 died (killed by signal 9 (SIGKILL))"


def test_each_process_reports_one_whole_line() -> None:
    """30 processes stopping at once on one stderr pipe, each with a guard racing its main
    thread, print exactly 30 whole lines: the own fault in full, another rank's as its
    headline, and a message alone as it is; every process exits 1."""
    res = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert res.stdout.strip() == str([1] * 30), res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 30 and res.stderr.count("pipeblocks: error: ") == 30, res.stderr
    assert sorted(lines) == sorted(
        ["pipeblocks: error: rank 0 stops in 0F3: rank 2 failed in 2F3"] * 10
        + [f"pipeblocks: error: {CAUSE}"] * 10
        + ["pipeblocks: error: rank 0 stops in 0F3: boom"] * 10), res.stderr
    assert not re.search(r"\S(?=pipeblocks: error:)", res.stderr)
