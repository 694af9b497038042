"""`pipeblocks search` and `pipeblocks pareto`: output, JSON, files, budgets, errors, progress."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from clikit import last_json, run

from pipeblocks.cli.main import main
from pipeblocks.cli.search import ProgressBar
from pipeblocks.ir import validate
from pipeblocks.ir.formats import load
from pipeblocks.search import Budget, search
from pipeblocks.sim import UniformCosts


def test_search_objective_bubble(capsys: pytest.CaptureFixture[str]) -> None:
    """--objective bubble is the library's Objective.BUBBLE: same schedule, and its papers'
    bubble rate is no worse than the default objective's (which ranks by makespan first)."""
    code, out, _ = run(capsys, "search", "-p", "8", "-m", "32", "--memory", "0.8125",
                       "--objective", "bubble", "--json")
    assert code == 0
    obj = last_json(out)
    r = search((8, 32), None, 0.8125, objective="bubble")
    assert obj["objective"] == "bubble" and obj["name"] == r.schedule.name
    code, out, _ = run(capsys, "search", "-p", "8", "-m", "32", "--memory", "0.8125", "--json")
    default = last_json(out)
    assert default["objective"] == "makespan"
    assert obj["bubble_rate"] <= default["bubble_rate"]
    assert default["makespan"] <= obj["makespan"]


def test_search_json_matches_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object: the library's schedule, numbers and recipe; stderr quiet."""
    code, out, err = run(capsys, "search", "-p", "6", "-m", "24", "--memory", "0.7",
                         "--cost", "f=3,b=4,w=2,comm=0.5", "--json", "--progress")
    assert code == 0 and err == ""
    obj = last_json(out)
    r = search((6, 24), UniformCosts(f=3, b=4, w=2, comm=0.5), 0.7)
    assert obj["name"] == r.schedule.name and obj["how"] == r.how
    assert obj["makespan"] == r.makespan and obj["bubble_rate"] == r.bubble_rate
    assert obj["peak_fraction"] == r.peak_fraction <= 0.7
    assert obj["budget"] == {"value": 0.7, "kind": "fraction"}
    assert obj["family"] in ("v", "zb", "named") and obj["seconds"] >= 0


def test_search_text_and_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The text report names the schedule and recipe; -o writes a file that loads back to the
    same schedule (torch-csv by extension, json with --format)."""
    csv = tmp_path / "best.csv"
    code, out, _ = run(capsys, "search", "-p", "4", "-m", "8", "--memory", "0.75",
                       "--family", "v", "-o", str(csv))
    assert code == 0
    assert "schedule        search:v(" in out or "schedule        v-" in out
    assert "peak            0.7500 x 1F1B peak" in out
    r = search((4, 8), None, 0.75, family="v")
    loaded = load(csv)
    validate(loaded)
    assert loaded.programs == r.schedule.programs
    js = tmp_path / "best.out"
    code, out, _ = run(capsys, "search", "-p", "4", "-m", "8", "--memory", "0.75",
                       "--family", "v", "-o", str(js), "--format", "json", "--json")
    assert code == 0 and last_json(out)["output"] == {"path": str(js), "format": "json"}
    assert load(js, "json").programs == r.schedule.programs


def test_search_budget_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Below the smallest feasible budget, no budget, two budgets, bytes without a byte cost
    model: exit 2 with one line naming the fix."""
    code, _, err = run(capsys, "search", "-p", "8", "-m", "32", "--memory", "0.3",
                       "--family", "v")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "smallest feasible one for family v" in err and "use a budget of 0.5 or more" in err
    code, _, err = run(capsys, "search", "-p", "4", "-m", "8")
    assert code == 2 and "--memory FRACTION" in err
    code, _, err = run(capsys, "search", "-p", "4", "-m", "8", "--memory", "1",
                       "--memory-bytes", "5")
    assert code == 2 and "one of --memory" in err
    code, _, err = run(capsys, "search", "-p", "4", "-m", "8", "--memory-bytes", "5e9")
    assert code == 2 and "needs a cost model whose memory is in bytes" in err


def test_search_memory_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    """--memory-bytes with the transformer preset: every rank's peak within the bytes."""
    budget = 6e9
    code, out, _ = run(capsys, "search", "-p", "4", "-m", "16", "--memory-bytes", str(budget),
                       "--model", "layers=16,hidden=2048,heads=16,seq=2048",
                       "--machine", "flops=1e14,bandwidth=2e10", "--json")
    assert code == 0
    obj = last_json(out)
    assert obj["memory_unit"] == "bytes" and max(obj["peak_memory"]) <= budget
    assert obj["budget"] == {"value": budget, "kind": "memory"}
    assert Budget.memory(budget).value == budget


def test_pareto_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pareto lists one best schedule per budget from the smallest feasible to 2 x 1F1B, never
    slower at a larger budget, named generators marked; -o draws a picture."""
    png = tmp_path / "front.png"
    code, out, _ = run(capsys, "pareto", "-p", "4", "-m", "8", "--json", "-o", str(png))
    assert code == 0 and png.stat().st_size > 0
    obj = last_json(out)
    budgets = [pt["budget"] for pt in obj["points"]]
    assert budgets[0] == 0.25 and budgets[-1] == 2.0
    spans = [pt["makespan"] for pt in obj["points"]]
    assert all(b <= a for a, b in zip(spans, spans[1:], strict=False))
    assert all(pt["peak_fraction"] <= pt["budget"] + 1e-9 for pt in obj["points"])
    named = {n["name"]: n for n in obj["named"]}
    assert named["1f1b"]["peak_fraction"] == 1.0
    code, out, _ = run(capsys, "pareto", "-p", "4", "-m", "8", "--family", "v", "--top", "1")
    assert code == 0
    assert "* v-half" in out and "* 1f1b\n" not in out and "* zb-h1" not in out
    assert out.count("search:v(") >= 1


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Both commands have --help."""
    for cmd in ("search", "pareto"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "--family" in capsys.readouterr().out


def test_progress_bar_waits_then_draws_and_clears() -> None:
    """The bar stays silent before its delay and when disabled; once shown, close() clears it."""
    buf = io.StringIO()
    bar = ProgressBar("search", enabled=True, stream=buf, delay=60)
    bar(1, 4, "v: screening blocks")
    assert buf.getvalue() == ""
    bar = ProgressBar("search", enabled=True, stream=buf, delay=0)
    bar(2, 4, "v: screening blocks")
    assert "[##############..............] 2/4 v: screening blocks" in buf.getvalue()
    bar.close()
    assert buf.getvalue().endswith("\r")
    off = io.StringIO()
    ProgressBar("search", enabled=False, stream=off, delay=0)(1, 2, "x")
    assert off.getvalue() == ""


def test_progress_reaches_the_total() -> None:
    """The library reports progress up to its total, the last call being done == total."""
    calls: list[tuple[int, int]] = []
    search((4, 8), UniformCosts(), 1.0, progress=lambda d, t, w: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(0 < d <= t for d, t in calls)
