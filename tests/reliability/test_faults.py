"""Faults during training with checkpoints: nothing hangs, every rank names the failed one,
and the last checkpoint stays whole and resumable.

tests/runtime/test_distributed.py injects a raise, a SIGKILL and a hang at a fixed pass of an
executor step and checks that every rank stops naming the rank and the pass. These tests add
what a long run meets: a rank of a real ``pipeblocks train --save`` run SIGKILLed from outside
at a moment of the test's choosing (between passes, or while the checkpoint is being written),
a pass that raises after checkpoints were saved, and a damaged checkpoint on resume. Each run
is bounded (``--timeout 20``) and each wait in the test has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeblocks.runtime.checkpoint import CheckpointError, find, read_tensors
from pipeblocks.runtime.faults import headline
from pipeblocks.runtime.launch import launch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent / "pipeblocks"
TIMEOUT = 20  # --timeout: the most a rank may wait for one message
RUN = ["train", "--schedule", "1f1b", "--ranks", "3", "--microbatches", "3", "--dim", "32",
       "--seq", "16", "--vocab", "64", "--microbatch-size", "2", "--timeout", str(TIMEOUT)]


def _until(what: str, pred: Callable[[], object], limit: float = 120.0, poll: float = 0.002):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _rank_pids(launcher: int, num_ranks: int) -> dict[int, int]:
    """rank -> pid of the launcher's rank processes (read from their RANK variable)."""
    def found() -> dict[int, int] | None:
        out = {}
        kids = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
        for pid in map(int, kids):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    out[int(item[5:])] = pid
        return out if len(out) == num_ranks else None
    return _until("the rank processes", found, limit=60, poll=0.05)


def _latest_step(folder: Path) -> int:
    try:
        return find(folder).step
    except CheckpointError:
        return 0


def _stop_a_rank(folder: Path, victim: int, when: Callable[[], bool]) -> tuple[str, str, float]:
    """Start a long ``pipeblocks train --save`` run, SIGKILL rank ``victim`` as soon as
    ``when()`` holds, and return its stdout, stderr and the seconds from the kill to its end."""
    proc = subprocess.Popen([str(BIN), *RUN, "--steps", "100000", "--save", str(folder),
                             "--save-every", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        pids = _rank_pids(proc.pid, 3)
        _until("the moment to strike", when)
        os.kill(pids[victim], signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=TIMEOUT + 40)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-3000:]
    for pid in pids.values():  # the launcher reaped every rank: none is left running
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()
    return out, err, took


def _error_lines(err: str) -> list[str]:
    """The ``pipeblocks: error:`` lines, each checked to be whole: none was spliced into
    another (the ranks share one stderr pipe; see faults, note "one line per rank")."""
    lines = [ln for ln in err.splitlines() if ln.startswith("pipeblocks: error: ")]
    assert err.count("pipeblocks: error: ") == len(lines), err[-3000:]
    return lines


def _check_stopped(err: str, victim: int, took: float) -> None:
    """Exactly one line from each other rank, saying where it stopped and naming the killed
    one; the launcher's line last; nothing from the killed rank; bounded."""
    cause = f"rank {victim} died (killed by signal 9 (SIGKILL))"
    lines = _error_lines(err)
    assert lines[-1] == f"pipeblocks: error: ranks [0, 1, 2] stopped: {cause}", err[-3000:]
    survivors = sorted({0, 1, 2} - {victim})
    assert sorted(int(ln.split()[3]) for ln in lines[:-1]) == survivors, err[-3000:]
    for ln in lines[:-1]:
        assert re.fullmatch(rf"pipeblocks: error: rank \d stops in .+: {re.escape(cause)}", ln), ln
    assert "Traceback" not in err
    assert took < TIMEOUT, f"the ranks took {took:.1f} s to stop"


def _whole(folder: Path) -> int:
    """The checkpoint ``latest`` names loads completely; returns its step."""
    info = find(folder)
    tensors = read_tensors(folder)
    stages = {k.split(".")[0] for k in tensors}
    assert stages == {"stage0", "stage1", "stage2"}
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
    assert not any(p.name.startswith(".tmp-step") and p == info.path for p in folder.iterdir())
    return info.step


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, float]:
    """A 3-rank run whose rank 1 was SIGKILLed after its third checkpoint: (checkpoint folder,
    stdout, stderr, seconds from the kill to the end)."""
    folder = tmp_path_factory.mktemp("killed") / "ckpt"
    def in_step_4() -> bool:
        if _latest_step(folder) < 3:
            return False
        time.sleep(0.01)  # checkpoint 3 is complete: the ranks are into step 4's passes
        return True

    return (folder, *_stop_a_rank(folder, 1, in_step_4))


def test_a_rank_killed_mid_run_stops_all_and_the_run_resumes(
        killed: tuple[Path, str, str, float]) -> None:
    """Rank 1 of a 3-rank run is SIGKILLed in the step after its third checkpoint: the others
    stop within seconds naming rank 1, the newest checkpoint is whole, and a run resumed from
    it (one rank holding the 3 stages) gives the loss the killed run printed for that step."""
    folder, out, err, took = killed
    _check_stopped(err, 1, took)
    step = _whole(folder)
    printed = dict(re.findall(r"step +(\d+)/\d+ +loss (\d+\.\d+)", out))
    # one rank holding all 3 stages: the same layout as 1F1B's on 3 ranks, and cheaper here
    one_rank = RUN + ["--schedule", "looped-bfs", "--ranks", "1", "--stages-per-rank", "3"]
    res = subprocess.run([str(BIN), *one_rank, "--steps", str(step + 1), "--resume",
                          str(folder)],
                         capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    again = dict(re.findall(r"step +(\d+)/\d+ +loss (\d+\.\d+)", res.stdout))
    assert list(again) == [str(step + 1)]
    if str(step + 1) in printed:  # the killed run finished that step before the kill
        assert again[str(step + 1)] == printed[str(step + 1)]


def test_a_rank_killed_while_saving_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """Rank 2 is SIGKILLed the moment a checkpoint's temporary folder appears (the ranks are
    writing it): the others stop naming rank 2, and ``latest`` still names the previous
    checkpoint, whole; the torn one is never taken for a checkpoint."""
    folder = tmp_path / "ckpt"

    def saving() -> bool:
        return _latest_step(folder) >= 2 and any(
            p.name.startswith(".tmp-step") for p in folder.iterdir())

    _, err, took = _stop_a_rank(folder, 2, saving)
    _check_stopped(err, 2, took)
    step = _whole(folder)
    torn = [p for p in folder.iterdir() if p.name.startswith(".tmp-step")]
    if torn:  # the kill landed inside the save, as intended (it nearly always does)
        assert int(torn[0].name.rsplit("-", 1)[1]) == step + 1


def test_a_damaged_checkpoint_stops_every_rank_naming_the_reader(
        killed: tuple[Path, str, str, float], tmp_path: Path) -> None:
    """Resuming from a checkpoint whose rank-1 file was cut in half, and whose manifest holds
    no checksums (as version 1 wrote it; a checksum refuses it before any process starts,
    test_train_faults.py): every rank exits 1 within seconds, naming rank 1 and the
    checkpoint; no rank hangs in the collective load. The cause with its fix is said twice, by
    rank 1 and by the launcher (the last line); ranks 0 and 2 say one short line each (faults,
    note "one line per rank")."""
    folder = tmp_path / "ckpt"
    shutil.copytree(killed[0], folder)
    data = find(folder).path / "__1_0.distcp"
    os.truncate(data, data.stat().st_size // 2)
    meta = data.parent / "pipeblocks.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "files": {}}))
    start = time.monotonic()
    res = subprocess.run([str(BIN), *RUN, "--steps", "100", "--resume", str(folder)],
                         capture_output=True, text=True, timeout=TIMEOUT + 120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 1 and time.monotonic() - start < TIMEOUT + 60
    where = f"rank 1 failed in loading the checkpoint {find(folder).path}"
    cause = (f"{where}: EOFError; the checkpoint is damaged: resume from an earlier one or "
             f"start afresh")
    lines = _error_lines(res.stderr)
    assert len(lines) == 4, res.stderr[-3000:]
    assert lines[-1] == f"pipeblocks: error: ranks [0, 1, 2] stopped: {cause}"
    assert sorted(lines[:-1]) == [
        f"pipeblocks: error: rank 0 stops in loading the checkpoint: {where}",
        f"pipeblocks: error: {cause}",
        f"pipeblocks: error: rank 2 stops in loading the checkpoint: {where}",
    ], res.stderr[-3000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("mode", ["raise"])  # "kill" works too; the tests above kill
def test_a_fault_in_a_pass_keeps_the_checkpoints(tmp_path: Path, mode: str) -> None:
    """Rank 1 raises in 1F2 of step 3, after checkpoints of steps 1 and 2: every rank exits
    non-zero naming rank 1 and the pass, within seconds, and checkpoint 2 is whole. Rank 1
    says the cause in full, the others one line with its headline."""
    start = time.monotonic()
    res = launch([sys.executable, str(HERE / "fault_worker.py"), str(tmp_path), mode, "1", "3",
                  "1F2"], 3, capture=True, env={"PB_TEST_TIMEOUT": str(TIMEOUT)}, grace=5,
                 deadline=120)
    assert all(c != 0 for c in res.codes), res.codes
    assert time.monotonic() - start < 90
    cause = ("rank 1 failed in 1F2: RuntimeError: injected fault" if mode == "raise"
             else "rank 1 died (killed by signal 9")
    assert cause in res.fault, res.fault
    for r in (0, 2):
        short = re.escape(headline(res.fault))
        assert re.fullmatch(rf"pipeblocks: error: rank {r} stops in .+: {short}\n",
                            res.stderr[r]), res.stderr[r]
    if mode == "raise":
        assert res.stderr[1] == f"pipeblocks: error: {res.fault}\n", res.stderr[1]
    assert find(tmp_path).step == 2
    assert len(read_tensors(tmp_path)) > 10
