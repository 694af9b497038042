"""The planner's activation memory against the small GPT's measured peaks on gloo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeblocks.planner.memory import activation_peaks
from pipeblocks.planner.model import parse_model

ROOT = Path(__file__).resolve().parents[2]
# pipeblocks.models.gpt's defaults as `pipeblocks train` builds them: fp32, no dropout,
# scaled_dot_product_attention (keeps a log-sum-exp, not the scores)
TINY = "layers=8,hidden=64,heads=4,seq=32,vocab=256,act_bytes=4,dropout=0,flash=1"


@pytest.mark.distributed
@pytest.mark.parametrize("schedule,layout", [("1f1b", "2,2,2,2"), ("zb-h1", "3,2,2,1"),
                                             ("v-half", "1,1,1,1,1,1,1,1")])
def test_predicted_peaks_match_measured_within_ten_percent(schedule: str, layout: str) -> None:
    """Every rank's predicted activation peak is within 10% of what autograd saved."""
    argv = [sys.executable, "-m", "pipeblocks", "train", "--schedule", schedule, "--ranks", "4",
            "--microbatches", "8", "--steps", "1", "--layers", "8", "--layout", layout,
            "--microbatch-size", "4", "--memory", "--json"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_activation_bytes"]
    counts = [int(x) for x in layout.split(",")]
    predicted = activation_peaks(parse_model(TINY), schedule, 4, 8, 4,
                                 layers_per_stage=counts, release_at_b=False)
    for rank, (got, want) in enumerate(zip(predicted, measured, strict=True)):
        assert got == pytest.approx(want, rel=0.10), (rank, predicted, measured)


@pytest.mark.distributed
def test_plan_run_trains_the_best_plan_and_compares_memory(tmp_path: Path) -> None:
    """``plan --run``: the best 2-rank plan trains; its predicted peaks are within 10%."""
    argv = [sys.executable, "-m", "pipeblocks", "plan", "--model",
            "layers=4,hidden=32,heads=2,seq=16,vocab=64", "--gpus", "2", "--global-batch", "8",
            "--tp", "1", "--pp", "2", "--microbatch-size", "2", "--run", "--run-steps", "1",
            "--export", str(tmp_path), "--json", "--quiet"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ran = json.loads(out.stdout)["run"]
    assert len(ran["loss"]) == 1 and ran["plan"]["pp"] == 2
    assert len(ran["measured_peak_activation_bytes"]) == 2
    assert max(abs(e) for e in ran["memory_error"]) < 0.10, ran
