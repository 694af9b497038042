"""``pipeblocks plan`` on the command line: table, export, picture, refusals."""

from __future__ import annotations

from pathlib import Path

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
