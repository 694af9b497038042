"""`python -m pipeblocks.cli.timing`: the table, --json, --engine-w."""

from __future__ import annotations

import json

import pytest

from pipeblocks.cli.timing import main

pytestmark = pytest.mark.torch

TINY = ["--layers", "2", "--stages", "2", "--reps", "1", "--dim", "16", "--heads", "2",
        "--seq", "8", "--microbatch-size", "2"]


@pytest.mark.parametrize("engine_w", [False, True])
def test_json_has_every_stage_and_says_which_w(capsys: pytest.CaptureFixture[str],
                                               engine_w: bool) -> None:
    assert main([*TINY, "--json", *(["--engine-w"] if engine_w else [])]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["w"] == ("engine" if engine_w else "direct")
    assert [r["stage"] for r in obj["rows"]] == [0, 1]
    for r in obj["rows"]:
        assert r["bw"] > 0 and r["b"] > 0 and r["w"] > 0
        assert r["split_over_fused"] == pytest.approx((r["b"] + r["w"]) / r["bw"])
    total = sum(r["b"] + r["w"] for r in obj["rows"]) / sum(r["bw"] for r in obj["rows"])
    assert obj["split_over_fused"] == pytest.approx(total)


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(TINY) == 0
    out = capsys.readouterr().out
    assert "with its direct kernels" in out and "all stages: (B+W)/BW" in out
    assert len([ln for ln in out.splitlines() if ln.strip()[:1].isdigit()]) == 2
