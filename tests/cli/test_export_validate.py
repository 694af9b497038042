"""`pipeblocks export` and `pipeblocks validate`: files, exit codes 0/1/2, one clear error line."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from clikit import run
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeblocks.cli.main import build_parser, main
from pipeblocks.generators import generate, names
from pipeblocks.ir import grid
from pipeblocks.ir.formats import json_io, load, torch_csv


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    assert lines[0].startswith("pipeblocks"), lines
    return lines[0]


# --- export ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["torch-csv", "json", "ascii"])
def test_export_to_stdout_is_the_format_text(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """Without -o the file text goes to stdout, exactly what the format module writes."""
    code, out, err = run(capsys, "export", "zb-h1", "-p", "3", "-m", "4", "--format", fmt)
    s = generate("zb-h1", 3, 4)
    expected = {"torch-csv": torch_csv.dumps(s), "json": json_io.dumps(s), "ascii": grid(s) + "\n"}
    assert (code, out, err) == (0, expected[fmt], "")


def test_export_file_then_validate_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export -o writes a file that loads back to the same schedule and validates (exit 0)."""
    for fmt, ext in (("torch-csv", "csv"), ("json", "json")):
        path = tmp_path / f"s.{ext}"
        code, out, _ = run(capsys, "export", "interleaved-1f1b", "-p", "2", "-m", "4",
                           "--stages-per-rank", "3", "--format", fmt, "-o", str(path))
        assert code == 0 and out.startswith(f"wrote {path} ({fmt}")
        assert load(path) == generate("interleaved-1f1b", 2, 4, 3)
        code, out, err = run(capsys, "validate", str(path))
        assert (code, err) == (0, "")
        assert out == (f"valid: {path} ({fmt}): "
                       + ("interleaved-1f1b " if fmt == "json" else "")
                       + "p=2 m=4 v=3 placement=loop, 48 actions\n")


def test_export_chrome_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """chrome-trace writes the simulated timeline: one complete event per pass, timed by --cost."""
    code, out, _ = run(capsys, "export", "1f1b", "-p", "2", "-m", "2", "--format", "chrome-trace",
                       "--cost", "f=1,b=2,w=0")
    assert code == 0
    events = [e for e in json.loads(out)["traceEvents"] if e["ph"] == "X"]
    assert len(events) == 8
    durations = sorted({e["dur"] / 1000 for e in events})  # the trace's unit is 1000 us
    assert durations == [1.0, 2.0]


def test_export_chrome_trace_without_the_trace_module(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the trace writer cannot be imported, one clear line and exit 1."""
    monkeypatch.setitem(sys.modules, "pipeblocks.visual.trace", None)
    code, out, err = run(capsys, "export", "1f1b", "-p", "2", "-m", "2", "--format",
                         "chrome-trace")
    assert code == 1 and out == ""
    assert "chrome-trace needs pipeblocks.visual.trace" in one_line(err)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["-p", "0", "-m", "4"], 2, "argument -p/--ranks: must be >= 1 (got 0)"),
        (["-p", "4", "-m", "0"], 2, "argument -m/--microbatches: must be >= 1 (got 0)"),
        (["-p", "x", "-m", "4"], 2, "expected an integer, got 'x'"),
        (["-p", "4", "-m", "4", "--format", "xml"], 2, "invalid choice: 'xml'"),
        (["-p", "4", "-m", "4", "--format", "json", "--cost", "f=1"], 2,
         "--cost only applies to --format chrome-trace"),
        (["-p", "4", "-m", "4", "--format", "chrome-trace", "--cost", "f=x"], 2, "not a number"),
        (["-p", "4", "-m", "4", "--stages-per-rank", "3", "--format", "json"], 2,
         "1f1b needs stages_per_rank == 1 (got 3)"),
    ],
)
def test_export_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                             message: str) -> None:
    """Bad arguments: exit 2, one line on stderr naming the problem, nothing on stdout."""
    got, out, err = run(capsys, "export", "1f1b", *argv)
    assert (got, out) == (code, "")
    assert message in one_line(err)


def test_export_unknown_generator_lists_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown NAME is exit 2 with a suggestion and every registered name."""
    code, _, err = run(capsys, "export", "1f1c", "-p", "2", "-m", "2", "--format", "json")
    line = one_line(err)
    assert code == 2 and "unknown schedule '1f1c'; did you mean '1f1b'?" in line
    assert all(n in line for n in names())


def test_export_to_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unwritable -o is exit 1 (failed, as in every command) with one line."""
    code, _, err = run(capsys, "export", "1f1b", "-p", "2", "-m", "2", "--format", "json",
                       "-o", str(tmp_path / "no" / "such.json"))
    assert code == 1 and "does not exist" in one_line(err)


# --- validate --------------------------------------------------------------------------------

def test_validate_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object: valid, format, spec, number of actions."""
    path = tmp_path / "s.json"
    path.write_text(json_io.dumps(generate("zb-v", 2, 4)))
    code, out, _ = run(capsys, "validate", str(path), "--json")
    doc = json.loads(out.strip().splitlines()[-1])
    assert code == 0
    assert doc == {"valid": True, "file": str(path), "format": "json", "name": "zb-v",
                   "spec": {"num_ranks": 2, "num_microbatches": 4, "stages_per_rank": 2,
                            "placement": "v"}, "num_actions": 48}


def test_validate_invalid_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A readable file whose schedule breaks a rule: exit 1, the rule, rank, position and grid."""
    path = tmp_path / "swapped.csv"
    path.write_text("0F0,0F1,0B0,0B1\n1F0,1B1,1F1,1B0\n")
    code, out, err = run(capsys, "validate", str(path))
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0].startswith("pipeblocks: error: invalid schedule (dependency): rank 1, "
                               "position 1: 1BW1 can never run: it needs 1F1")
    assert lines[1:] == ["rank 0 |  F0  F1 BW0 BW1", "rank 1 |  F0[BW1] F1 BW0",
                         "note: the message uses pipeblocks letters: B is PyTorch's I, BW is "
                         "PyTorch's B"]
    code, out, _ = run(capsys, "validate", str(path), "--json")
    doc = json.loads(out.strip().splitlines()[-1])
    assert code == 1
    assert (doc["valid"], doc["rule"], doc["rank"], doc["position"]) == (False, "dependency", 1, 1)


@pytest.mark.parametrize(
    ("name", "text", "where", "message"),
    [
        ("bad.csv", "0F0,0B0\n1F0,1X0\n", "bad.csv:2:5", "cell '1X0' is not"),
        ("empty.csv", "", "empty.csv:1:1", "empty input"),
        ("trunc.json", '{"format": "pipeblocks-schedule", "vers', "trunc.json:1:35",
         "not valid JSON"),
        ("placed.csv", "1F0,1B0\n0F0,0B0\n", "placed.csv:1:1", "contradicts the placement"),
        ("placed.json", json_io.dumps(generate("1f1b", 2, 1)).replace(
            '["0F0", "0BW0"],\n    ["1F0", "1BW0"]', '["1F0", "1BW0"],\n    ["0F0", "0BW0"]'),
         "placed.json:7:6", "1F0 is in rank 0's program but the spec's placement 'loop'"),
        ("huge.json", json_io.dumps(generate("1f1b", 1, 1)).replace(
            '"num_ranks": 1', '"num_ranks": ' + "9" * 5000), "huge.json:5:25",
         "(out of range)"),
        ("uni.csv", "0F0,0B0é\n", "uni.csv:1:5", "cell '0B0é'"),
        ("types.json", json_io.dumps(generate("1f1b", 1, 1)).replace('"0F0"', "0"),
         "types.json:7:6", "programs[0][0] is the number 0"),
    ],
)
def test_validate_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                  text: str, where: str, message: str) -> None:
    """A file that is not a schedule: exit 1 and one line with file:line:column and the reason."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    code, out, err = run(capsys, "validate", str(path))
    line = one_line(err)
    assert (code, out) == (1, "")
    assert line.startswith(f"pipeblocks: error: {tmp_path / where}")
    assert message in line


def test_validate_json_placement_contradiction_names_the_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON file whose spec says 'v' but whose programs follow 'loop': the first action the
    spec puts elsewhere is named, with its line and column."""
    path = tmp_path / "s.json"
    path.write_text(json_io.dumps(generate("interleaved-1f1b", 2, 2, 2)).replace(
        '"placement": "loop"', '"placement": "v"'))
    code, _, err = run(capsys, "validate", str(path))
    assert code == 1
    assert "2F0 is in rank 0's program but the spec's placement 'v'" in one_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["s.csv", "--format", "xml"], "invalid choice: 'xml'"),
        (["s.csv", "--stages-per-rank", "0"], "must be >= 1 (got 0)"),
        (["s.json", "--placement", "v"], "placement=v disagrees with s.json, whose spec says "
                                         "placement=loop"),
        ([], "the following arguments are required: FILE"),
    ],
)
def test_validate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, argv: list[str],
                               message: str) -> None:
    """Usage errors (a missing file, bad options): exit 2 and one line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.csv").write_text(torch_csv.dumps(generate("1f1b", 2, 2)))
    (tmp_path / "s.json").write_text(json_io.dumps(generate("1f1b", 2, 2)))
    code, out, err = run(capsys, "validate", *argv)
    assert (code, out) == (2, "")
    assert message in one_line(err)


def test_validate_csv_hints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A one-rank V schedule reads as loop unless --placement v says otherwise."""
    path = tmp_path / "v1.csv"
    path.write_text(torch_csv.dumps(generate("zb-v", 1, 2)))
    code, out, _ = run(capsys, "validate", str(path), "--placement", "v", "--json")
    assert code == 0 and json.loads(out)["spec"]["placement"] == "v"
    code, out, _ = run(capsys, "validate", str(path), "--json")
    assert code == 0 and json.loads(out)["spec"]["placement"] == "loop"


# --- every subcommand ------------------------------------------------------------------------

def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", _subcommands())
def test_help_works_for_every_subcommand(capsys: pytest.CaptureFixture[str], command: str) -> None:
    """`pipeblocks CMD --help` exits 0 and prints a usage line."""
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: pipeblocks {command}")


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """Through a real process: a malformed file gives exit 1 and exactly one stderr line."""
    path = tmp_path / "bad.csv"
    path.write_text("0F0,,zz\n")
    proc = subprocess.run([sys.executable, "-m", "pipeblocks", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"pipeblocks: error: {path}:1:6: cell 'zz' is not <stage><letter>" \
        "<microbatch> with a PyTorch letter F, I, W or B (I is our B, B is our BW); write e.g. " \
        "0F3, 2I1, 2W1 or 1B0\n"


SAMPLE_CSV = torch_csv.dumps(generate("zb-h1", 2, 3))
SAMPLE_JSON = json_io.dumps(generate("1f1b", 2, 3))


@settings(max_examples=40)
@given(st.sampled_from([(SAMPLE_CSV, ".csv"), (SAMPLE_JSON, ".json")]), st.data())
def test_validate_never_prints_a_traceback(sample: tuple[str, str], data: st.DataObject) -> None:
    """Randomly edited files: exit 0 or 1, and on 1 an error that starts with one clear line
    (a file error is that line alone; a schedule error adds its grid)."""
    text, ext = sample
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        text = text[:i] + data.draw(st.text(max_size=3)) + text[i + data.draw(st.integers(0, 3)):]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"s{ext}"
        path.write_text(text, encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", str(path)])
    assert "Traceback" not in err.getvalue()
    if code == 0:
        assert out.getvalue().startswith("valid: ") and err.getvalue() == ""
    else:
        assert code == 1 and out.getvalue() == ""
        lines = err.getvalue().splitlines()
        assert lines[0].startswith("pipeblocks: error: ")
        if "invalid schedule (" not in lines[0]:
            assert len(lines) == 1, lines
