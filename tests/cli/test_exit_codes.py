"""One problem, one exit code in every pure command: 0 ok, 1 failed (invalid input, a file
that cannot be read or written), 2 usage (bad arguments or option values)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clikit import run

from pipeblocks.generators import generate
from pipeblocks.ir.formats import json_io

# Every pure command that writes a file with -o, with arguments that succeed otherwise.
WRITERS = {
    "draw": ["draw", "1f1b", "-p", "2", "-m", "2", "-o"],
    "export": ["export", "1f1b", "-p", "2", "-m", "2", "--format", "json", "-o"],
    "search": ["search", "-p", "2", "-m", "4", "--memory", "1", "-o"],
    "pareto": ["pareto", "-p", "2", "-m", "4", "-o"],
}

# Every pure command that reads a schedule or costs file, "{}" where the file goes.
READERS = {
    "validate": ["validate", "{}"],
    "simulate --schedule": ["simulate", "--schedule", "{}"],
    "draw --schedule": ["draw", "--schedule", "{}", "-o", "x.png"],
    "simulate --costs": ["simulate", "1f1b", "-p", "2", "-m", "2", "--costs", "{}"],
    "show --costs": ["show", "1f1b", "-p", "2", "-m", "2", "--timed", "--costs", "{}"],
    "compare --costs": ["compare", "-p", "2", "-m", "4", "--costs", "{}"],
    "search --costs": ["search", "-p", "2", "-m", "4", "--memory", "1", "--costs", "{}"],
    "pareto --costs": ["pareto", "-p", "2", "-m", "4", "--costs", "{}"],
    "draw --costs": ["draw", "1f1b", "-p", "2", "-m", "2", "--costs", "{}", "-o", "x.png"],
}


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], code: int, *,
           grid: bool = False) -> str:
    """Run; assert the exit code, one stderr line (a schedule error adds its grid) and no
    traceback; return the first line."""
    got, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code and "Traceback" not in err, (argv, got, err)
    assert lines[0].startswith("pipeblocks: error: ")
    assert all(x.startswith("rank ") for x in lines[1:]) if grid else len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_missing_output_folder_is_1_everywhere(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-o into a folder that does not exist: exit 1, the folder named, nothing created."""
    monkeypatch.chdir(tmp_path)
    suffix = ".png" if command in ("draw", "pareto") else ".json"
    line = _fails(capsys, [*WRITERS[command], f"no/such{suffix}"], 1)
    assert "folder 'no' does not exist" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_an_output_that_is_a_folder_is_1_everywhere(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-o naming an existing folder (with a good extension): exit 1, one line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.png").mkdir()
    assert "-o out.png is a folder" in _fails(capsys, [*WRITERS[command], "out.png"], 1)


@pytest.mark.parametrize("command", sorted(READERS))
@pytest.mark.parametrize("problem", ["missing", "folder"])
def test_an_input_file_that_cannot_be_read_is_1_everywhere(
    command: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A schedule or costs file that does not exist, or is a folder: exit 1, named."""
    monkeypatch.chdir(tmp_path)
    name = "nothing.json"
    if problem == "folder":
        (tmp_path / name).mkdir()
    line = _fails(capsys, [a.replace("{}", name) for a in READERS[command]], 1)
    assert name in line


@pytest.mark.parametrize("command", ["validate", "simulate --schedule", "draw --schedule"])
def test_a_schedule_that_breaks_a_rule_is_1_everywhere(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A readable schedule file that is invalid (a pass missing): exit 1, the rule named."""
    monkeypatch.chdir(tmp_path)
    text = json_io.dumps(generate("1f1b", 2, 2)).replace('"1BW1"', '"1F1"', 1)
    (tmp_path / "bad.json").write_text(text)
    line = _fails(capsys, [a.replace("{}", "bad.json") for a in READERS[command]], 1, grid=True)
    assert "invalid schedule (" in line and "x.png" not in {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    "argv",
    [["show", "1f1c", "-p", "2", "-m", "2"], ["export", "1f1c", "-p", "2", "-m", "2", "-f", "json"],
     ["simulate", "1f1c", "-p", "2", "-m", "2"], ["draw", "1f1c", "-p", "2", "-m", "2", "-o",
                                                  "x.png"],
     ["draw", "1f1b", "-p", "2", "-m", "2", "-o", "x.bmp"], ["pareto", "-p", "2", "-m", "4",
                                                             "-o", "x.bmp"],
     ["simulate", "1f1b", "-p", "2", "-m", "2", "--cost", "f=x"], ["list", "--no-such-option"]],
)
def test_a_bad_argument_value_is_2_everywhere(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown generator, a picture extension that is not one, a bad --cost, an unknown
    option: usage, exit 2."""
    monkeypatch.chdir(tmp_path)
    _fails(capsys, argv, 2)
    assert list(tmp_path.iterdir()) == []
