"""Faults a training run must not hide, with real ``pipeblocks train`` processes (gloo).

A diverged run (``--lr 1e30``) stops with exit 1 naming the step, rank and stage and writes no
checkpoint of that state; a flipped block in a real rank's file is refused before any rank
starts; a frozen rank (SIGSTOP) is named as the one that is stuck, not as a cycle; a model too
large to allocate gives one line per rank; a killed launcher leaves one line per rank and no C++
stacks. Every run is bounded (``--timeout``, and a deadline on each wait here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_faults import BIN, RUN, _error_lines, _rank_pids, _until

from pipeblocks.runtime.checkpoint import find
from pipeblocks.runtime.faults import headline

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _train(*args: str, limit: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *RUN, *args], capture_output=True, text=True,
                          timeout=limit, env=ENV)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 3-rank run with ``--lr 1e30``, saving after every step, with ``--json``."""
    folder = tmp_path_factory.mktemp("diverged") / "ckpt"
    return folder, _train("--steps", "6", "--lr", "1e30", "--save", str(folder),
                          "--save-every", "1", "--json")


def test_a_non_finite_loss_stops_the_run_naming_step_rank_and_stage(diverged) -> None:
    """Step 1 trains (its Adam update makes the weights ~1e30), step 2's first stage outputs
    inf: exit 1, the line names step 2, stage 0 and rank 0 (rank 0's and the launcher's copy),
    ``--json`` says ``non-finite`` with the same, and the last checkpoint is step 1's."""
    folder, res = diverged
    assert res.returncode == 1, res.stderr[-3000:]
    cause = ("step 2: the output of stage 0 (rank 0) is not finite (NaN or inf), the first "
             "such value of the step")
    lines = _error_lines(res.stderr)
    assert len(lines) == 2 and all(cause in ln for ln in lines), res.stderr[-3000:]
    assert lines[-1].startswith("pipeblocks: error: ranks [0, 1, 2] stopped: step 2")
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["status"] == "non-finite" and report["step"] == 2
    assert (report["rank"], report["stage"], report["what"]) == (0, 0, "output")
    assert len(report["loss"]) == 1 and report["loss"][0] > 0
    assert find(folder).step == 1 and sorted(p.name for p in folder.iterdir()) == [
        "latest", "step-00000001"]
    assert "Traceback" not in res.stderr


def test_an_emulated_run_reports_no_loss_not_a_non_finite_one() -> None:
    """``--emulate-ms`` computes no loss: ``--json`` says status ok with null losses."""
    res = _train("--steps", "2", "--emulate-ms", "1", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["status"] == "ok" and report["loss"] == [None, None]


def test_a_flipped_block_in_a_ranks_file_is_refused_before_training(diverged,
                                                                     tmp_path: Path) -> None:
    """4 KiB inverted in rank 1's file of a real checkpoint: ``--resume`` exits 1 at once with
    one line naming the file; no step runs (stdout is empty). A fresh run saving into the
    folder is refused (exit 2), as the folder holds another run's checkpoints."""
    folder = tmp_path / "ckpt"
    shutil.copytree(diverged[0], folder)
    data = find(folder).path / "__1_0.distcp"
    raw = bytearray(data.read_bytes())
    raw[:4096] = bytes(b ^ 0xFF for b in raw[:4096])
    data.write_bytes(bytes(raw))
    res = _train("--steps", "4", "--lr", "1e30", "--resume", str(folder))
    assert res.returncode == 1 and res.stdout == "", res.stderr[-3000:]
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"pipeblocks: error: --resume {find(folder).path}: __1_0.distcp does not match its "
        f"checksum"), res.stderr[-3000:]
    assert "damaged" in lines[0] and res.stderr.count("\n") == 1
    fresh = _train("--steps", "2", "--save", str(folder))
    assert fresh.returncode == 2 and "holds checkpoints of another run" in fresh.stderr


def _freeze(victim: int) -> tuple[int, str, float]:
    """A 3-rank run (``--timeout 5``, no saving) whose rank ``victim`` is SIGSTOPped after step
    3: (exit code, stderr, seconds from the stop to the end)."""
    proc = subprocess.Popen([str(BIN), *RUN, "--steps", "100000", "--timeout", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        pids = _rank_pids(proc.pid, 3)
        assert proc.stdout is not None
        _until("step 3", lambda: "step   3/" in proc.stdout.readline(), limit=120)  # type: ignore[union-attr]
        os.kill(pids[victim], signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=90)
        return proc.returncode, err, time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("victim", [1, 2])
def test_a_frozen_rank_is_named_as_stuck_not_as_a_cycle(victim: int) -> None:
    """Rank ``victim`` of 3 is SIGSTOPped mid-run (``--timeout 5``): the run ends with exit 1
    within seconds, the root cause names it as stuck with its last pass and heartbeat, no line
    speaks of ranks waiting on each other, and the other ranks say one line each (the frozen
    one says nothing: the launcher kills it)."""
    code, err, took = _freeze(victim)
    assert code == 1, err[-3000:]
    lines = _error_lines(err)
    cause = lines[-1].split(" stopped: ", 1)[1]
    assert re.match(rf"rank {victim} is stuck in (.+) \(its last heartbeat was [\d.]+ s ago, "
                    rf"in \1; the process is frozen or stopped\): rank \d timed out after 5 s",
                    cause), err[-3000:]
    assert "each other" not in err and "Traceback" not in err
    survivors = sorted({0, 1, 2} - {victim})
    assert sorted(int(ln.split()[3]) for ln in lines[:-1]) == survivors, err[-3000:]
    assert all(ln.endswith(headline(cause)) for ln in lines[:-1]), err[-3000:]
    assert took < 45, f"took {took:.1f} s"


def test_a_model_too_large_gives_one_line_per_rank() -> None:
    """``--seq 10**12`` (a 119,000 GiB position table at --dim 32): each rank says it ran out of memory
    and what it tried to allocate; exit 1; no traceback."""
    res = _train("--steps", "1", "--seq", str(10**12), limit=120)
    assert res.returncode == 1
    lines = _error_lines(res.stderr)
    said = "ran out of memory building the model: it tried to allocate 119,209.3 GiB ("
    assert len(lines) == 4 and all(said in ln and "seq 1000000000000" in ln
                                   for ln in lines), res.stderr[-3000:]
    assert sorted(int(ln.split()[3]) for ln in lines[:-1]) == [0, 1, 2]
    assert "Traceback" not in res.stderr


def test_a_killed_launcher_leaves_one_line_per_rank_and_no_cpp_stacks() -> None:
    """SIGKILL of ``pipeblocks train`` itself mid-run: every rank stops within seconds with
    one line (it lost the rendezvous store) and nothing else on stderr (no c10d stacks)."""
    proc = subprocess.Popen([str(BIN), *RUN, "--steps", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        pids = _rank_pids(proc.pid, 3)
        _until("a few steps", lambda: proc.stdout is not None and "step   3/" in
               proc.stdout.readline(), limit=120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        start = time.monotonic()
        _until("the ranks to end", lambda: not any(Path(f"/proc/{p}").exists() and "zombie"
                                                   not in Path(f"/proc/{p}/status").read_text()
                                                   for p in pids.values()), limit=30, poll=0.1)
        assert time.monotonic() - start < 30
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = _error_lines(err)
    assert err.count("\n") == len(lines) == 3, err[-3000:]
    assert all(re.fullmatch(r"pipeblocks: error: rank \d stops in .+: lost the rendezvous "
                            r"store \(.+\)", ln) for ln in lines), err[-3000:]
