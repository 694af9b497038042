"""`pipeblocks draw` and `pipeblocks show --timed`: files written, one clear line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeblocks.cli.main import main
from pipeblocks.generators import generate


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pipeblocks: error: "), err
    return err[0]


def test_draw_name_writes_png_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """draw NAME -o x.png writes a PNG; --json's last line reports the metrics."""
    out = tmp_path / "zb.png"
    code = main(["draw", "1f1b", "-p", "3", "-m", "4", "--cost", "f=1,b=2,w=1,comm=0.1",
                 "--memory", "0.8", "-o", str(out), "--json"])
    assert code == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["output"] == str(out)
    assert [s["name"] for s in doc["schedules"]] == ["1f1b"]
    assert doc["schedules"][0]["peak_memory"] == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("ext,head", [(".svg", b"<?xml"), (".pdf", b"%PDF-")])
def test_draw_compare_formats(tmp_path: Path, ext: str, head: bytes,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """--compare draws several schedules into one file; the extension picks the format."""
    out = tmp_path / f"cmp{ext}"
    assert main(["draw", "--compare", "gpipe,1f1b", "-p", "2", "-m", "3", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(head)
    printed = capsys.readouterr().out
    assert "gpipe" in printed and "1f1b" in printed and f"wrote {out}" in printed


@pytest.mark.parametrize("argv,needle", [
    (["draw", "-p", "4", "-m", "8"], "exactly one of NAME"),
    (["draw", "1f1b", "--compare", "gpipe,1f1b", "-p", "4", "-m", "8"], "exactly one of NAME"),
    (["draw", "1f1b", "-p", "4"], "needs -m"),
    (["draw", "--compare", "1f1b,gpipe"], "needs -p and -m"),
    (["draw", "1f1b", "-p", "4", "-m", "8", "-o", "x.gif"], ".png, .svg or .pdf"),
    (["draw", "nope", "-p", "4", "-m", "8"], "unknown schedule 'nope'"),
    (["draw", "--compare", "1f1b,nope", "-p", "4", "-m", "8"], "unknown schedule 'nope'"),
    (["draw", "--compare", ",", "-p", "4", "-m", "8"], "generator names"),
    (["draw", "1f1b", "-p", "4", "-m", "8", "--cost", "f=x"], "not a number"),
    (["draw", "1f1b", "-p", "4", "-m", "8", "--cost", "f=1", "--costs", "c.json"], "one source"),
])
def test_draw_bad_input_is_one_line(tmp_path: Path, argv: list[str], needle: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Bad combinations fail with exit 2 and one 'pipeblocks: error:' line naming the problem."""
    if "-o" not in argv:
        argv = [*argv, "-o", str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_draw_missing_folder_and_schedule_file(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A missing output folder or schedule file fails with one line, no traceback."""
    assert main(["draw", "1f1b", "-p", "2", "-m", "2", "-o", str(tmp_path / "no" / "x.png")]) == 1
    assert "does not exist" in _one_error_line(capsys)
    assert main(["draw", "--schedule", str(tmp_path / "none.json"), "-o",
                 str(tmp_path / "x.png")]) != 0
    _one_error_line(capsys)


def test_draw_schedule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--schedule FILE draws a schedule saved in pipeblocks JSON; -p must agree with it."""
    formats = pytest.importorskip("pipeblocks.ir.formats")
    json_io = pytest.importorskip("pipeblocks.ir.formats.json_io")
    if not hasattr(formats, "load"):
        pytest.skip("pipeblocks.ir.formats.load is not written yet")
    src = tmp_path / "s.json"
    src.write_text(json_io.dumps(generate("1f1b", 2, 3)))
    out = tmp_path / "s.png"
    assert main(["draw", "--schedule", str(src), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main(["draw", "--schedule", str(src), "-p", "3", "-o", str(out)]) == 2
    assert "disagrees" in _one_error_line(capsys)


def test_show_timed_respects_width(capsys: pytest.CaptureFixture[str]) -> None:
    """show --timed prints the timeline within --width, with the metrics and the legend."""
    assert main(["show", "1f1b", "-p", "4", "-m", "8", "--timed", "--width", "60",
                 "--cost", "f=1,b=2,w=0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 60 for line in lines)
    rows = [line for line in lines if line.startswith("rank ")]
    assert len(rows) == 4 and all(len(r) == 60 for r in rows)
    assert "." in rows[0] and "idle" in lines[-1]


@pytest.mark.parametrize("argv,needle", [
    (["show", "1f1b", "-p", "4", "-m", "8", "--width", "60"], "add --timed"),
    (["show", "1f1b", "-p", "4", "-m", "8", "--cost", "f=2"], "--cost only apply"),
    (["show", "1f1b", "-p", "4", "-m", "8", "--timed", "--width", "9"], "--width 16 or more"),
])
def test_show_timed_bad_input(argv: list[str], needle: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """--width without --timed, or too narrow a width, fails with one clear line."""
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)
