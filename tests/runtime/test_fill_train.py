"""``pipeblocks train --fill``: the report keys, eval losses, bad options refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeblocks.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[2]


def _train(*args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "pipeblocks", "train", *args, "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.distributed
def test_train_fill_eval_reports_losses_and_the_fill_keys() -> None:
    """--fill eval: every eval microbatch gets a loss; the three report keys are there."""
    r = _train("--schedule", "1f1b", "--ranks", "2", "--microbatches", "4", "--steps", "4",
               "--dim", "16", "--heads", "2", "--seq", "8", "--vocab", "32",
               "--fill", "eval", "--fill-count", "3")
    assert len(r["fill_eval_losses"]) == 3
    assert all(math.isfinite(x) and x > 0 for x in r["fill_eval_losses"])
    assert r["fill_slowdown"] > 0 and r["fill_bubble_used"] >= 0
    assert r["fill_tasks_done"] >= 0 and r["fill_errors"] == []


@pytest.mark.distributed
def test_train_fill_sleep_uses_the_bubble() -> None:
    """--fill sleep with emulated passes: tasks run in the gaps and use part of the bubble."""
    r = _train("--schedule", "1f1b", "--ranks", "2", "--microbatches", "4", "--steps", "4",
               "--emulate-ms", "20", "--fill", "sleep", "--fill-ms", "5")
    assert r["fill_tasks_done"] > 0
    assert 0 < r["fill_bubble_used"] <= 1.2
    assert r["fill_eval_losses"] == []


def test_bad_fill_options_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown kind, a non-positive --fill-ms and a negative --fill-headroom are refused
    before any process starts."""
    for bad in (["--fill", "nap"], ["--fill", "sleep", "--fill-ms", "0"],
                ["--fill", "side", "--fill-headroom", "-1"]):
        with pytest.raises(SystemExit) as e:
            cli(["train", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "4", *bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--fill" in err and len(err.strip().splitlines()) == 1


def test_fill_headroom_reaches_the_ranks_plan() -> None:
    """--fill-headroom MB goes to the rank processes and into the plan's options (MB)."""
    from pipeblocks.cli.train import build_parser, build_plan, to_argv

    argv = ["--schedule", "1f1b", "--ranks", "2", "--microbatches", "4", "--fill", "side",
            "--fill-headroom", "64"]
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(to_argv(args))  # what a rank process parses
    assert build_plan(again).options.fill_headroom_mb == 64.0
    assert build_plan(build_parser().parse_args(argv[:-2])).options.fill_headroom_mb is None
