"""``pipeblocks plan`` on the command line: table, export, picture, refusals."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from pipeblocks.cli.main import main as cli

GPT = "layers=24,hidden=2048,heads=16,seq=2048,vocab=50304"


def test_table_export_and_picture(tmp_path: Path, capsys) -> None:
    """The table ranks plans, lists each schedule's best; --export and --plot write files."""
    code = cli(["plan", "--model", GPT, "--gpus", "8", "--global-batch", "64", "--top", "3",
                "--schedules", "1f1b,v-half", "--export", str(tmp_path / "out"),
                "--plot", str(tmp_path / "plans.png")])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["#", "schedule"] and lines[2].split()[0] == "1"
    assert "the best of each schedule:" in out and "planning [" in err
    names = {"schedule.csv", "schedule.json", "plan.json", "train.sh", "torchtitan.toml"}
    assert names <= {p.name for p in (tmp_path / "out").iterdir()}
    assert (tmp_path / "plans.png").stat().st_size > 1000


def test_bad_model_and_unknown_schedule_are_usage_errors(capsys) -> None:
    """A model text without vocab and an unknown schedule exit 2 with one line naming them."""
    assert cli(["plan", "--model", "layers=2,hidden=64,heads=4,seq=8", "--gpus", "2",
                "--global-batch", "4"]) == 2
    assert "needs vocab" in capsys.readouterr().err
    assert cli(["plan", "--model", GPT, "--gpus", "2", "--global-batch", "4", "--schedules",
                "1f1c"]) == 2
    assert "unknown schedule '1f1c'" in capsys.readouterr().err


def test_a_batch_no_layout_divides_is_refused(capsys) -> None:
    """Batch 3 on 16 GPUs: tp <= 2 (heads) and pp <= 4 (layers) leave dp >= 2, never dividing 3."""
    code = cli(["plan", "--model", "layers=4,hidden=64,heads=2,seq=8,vocab=16", "--gpus", "16",
                "--global-batch", "3", "--quiet"])
    assert code == 2 and "divides the global batch 3" in capsys.readouterr().err


def test_the_exported_torchrun_line_builds_the_planned_run(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    """train.sh's torchrun line parses as a rank's options and builds the plan's schedule
    (pp ranks, m microbatches) with its layers per stage; torchtitan.toml has the degrees."""
    pytest.importorskip("torch")
    from pipeblocks.cli.train import build_parser, build_plan

    assert cli(["plan", "--model", "layers=8,hidden=64,heads=4,seq=32,vocab=256", "--gpus", "4",
                "--global-batch", "16", "--tp", "1", "--pp", "4", "--microbatch-size", "2",
                "--export", str(tmp_path), "--json", "--quiet"]) == 0
    best = json.loads(capsys.readouterr().out)["best"]
    lines = (tmp_path / "train.sh").read_text().splitlines()
    assert any(x.startswith(f"pipeblocks train --ranks {best['pp']} ") for x in lines)
    argv = shlex.split(next(x for x in lines if x.startswith("# or: torchrun"))[len("# or: "):])
    assert argv[:3] == ["torchrun", "--nproc-per-node", str(best["pp"])]
    monkeypatch.chdir(tmp_path)  # the line names schedule.json beside it
    plan = build_plan(build_parser().parse_args(argv[argv.index("pipeblocks.train") + 1:]),
                      world=best["pp"])
    spec = plan.schedule.spec
    assert (spec.num_ranks, spec.num_microbatches) == (best["pp"], best["num_microbatches"])
    blocks = list(plan.layout)
    blocks[0] -= 1  # the embedding
    blocks[-1] -= 1  # the head
    assert blocks == best["layers_per_stage"]
    toml = (tmp_path / "torchtitan.toml").read_text()
    for line in (f"pipeline_parallel_degree = {best['pp']}", "tensor_parallel_degree = 1",
                 f"pipeline_parallel_microbatch_size = {best['microbatch_size']}",
                 'pipeline_parallel_schedule_csv = "schedule.csv"'):
        assert line in toml
