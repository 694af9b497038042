"""`pipeblocks simulate` and `pipeblocks compare`: output, JSON, errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clikit import last_json, run

from pipeblocks.cli.main import main
from pipeblocks.generators import generate, names
from pipeblocks.sim import UniformCosts, load_costs, simulate


def test_simulate_json_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object with the promised fields, equal to the library's numbers."""
    code, out, _ = run(capsys, "simulate", "zb-h1", "-p", "4", "-m", "8",
                       "--cost", "f=1,b=2,w=1,comm=0.5", "--json")
    assert code == 0
    obj = last_json(out)
    sim = simulate(generate("zb-h1", 4, 8), UniformCosts(f=1, b=2, w=1, comm=0.5))
    assert obj["makespan"] == sim.makespan
    assert obj["bubble_rate"] == sim.bubble_rate
    assert obj["bubble_rate_global"] == sim.bubble_rate_global
    assert obj["peak_memory"] == list(sim.peak_memory)
    assert obj["peak_fraction"] == sim.peak_fraction
    assert obj["busy"] == list(sim.busy)


def test_simulate_text_and_bubbles(capsys: pytest.CaptureFixture[str]) -> None:
    """The text report has the metrics and a row per rank; --bubbles adds the map."""
    code, out, _ = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "2", "--bubbles")
    assert code == 0
    assert "makespan            9" in out and "bubble rate         0.3333" in out
    assert "    0 inner          2          4          2          0" in out
    assert "    1 tail           7          9          0          2" in out


def test_simulate_costs_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--costs FILE uses per-stage times and memory; --memory-model unit replaces the memory."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"time_unit": "ms", "stages": [{"f": 1, "b": 2, "w": 1, "mem_f": 3},
                                           {"f": 1, "b": 2, "w": 1}]}))
    code, out, _ = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "4", "--costs", str(path),
                       "--json")
    assert code == 0 and last_json(out)["peak_memory"] == [6, 1]
    code, out, _ = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "4", "--costs", str(path),
                       "--memory-model", "unit", "--json")
    assert code == 0 and last_json(out)["peak_memory"] == [2, 1]


def test_simulate_transformer_preset(capsys: pytest.CaptureFixture[str]) -> None:
    """--model with --machine times passes from FLOPs and counts memory in bytes."""
    code, out, _ = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "4", "--model",
                       "layers=2,hidden=4,heads=2,seq=8,vocab=10", "--machine",
                       "flops=1024,bandwidth=32,latency=0.5", "--json")
    obj = last_json(out)
    assert code == 0 and obj["memory_unit"] == "bytes"
    assert obj["busy"] == [4 * (4 + 8), 4 * (4.625 + 9.25)]


@pytest.mark.parametrize(("content", "code", "needle"), [
    ({"stages": [{"f": 1, "b": 1, "w": 1}] * 3}, 2, "'stages' has 3 entries"),
    ({"stages": [{"f": 1, "b": 1, "w": 1}] * 3 + [{"f": -1, "b": 1, "w": 1}]}, 1,
     "'stages[3].f' must be a finite number >= 0 (got -1)"),
    ({"stages": [{"f": 1, "b": 1, "w": 1}] * 4, "links": [[0, 1], [1, 0, 2]]}, 1,
     "'links[1]' has 3 entries"),
    ({"stages": [{"f": 1, "b": 1, "w": 1}] * 4, "links": [[0, 1], [1, 0]]}, 2,
     "'links' is 2x2 but the schedule has 4 ranks"),
])
def test_bad_costs_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    content: object, code: int, needle: str) -> None:
    """A missing stage, a negative time or a wrong shape: one stderr line naming the field."""
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"time_unit": "ms", **content}))  # type: ignore[dict-item]
    got, out, err = run(capsys, "simulate", "1f1b", "-p", "4", "-m", "8", "--costs", str(path))
    assert got == code and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert err.startswith("pipeblocks: error: ")


def test_simulate_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Two sources of times, or no schedule at all, are usage errors (exit 2)."""
    code, _, err = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "2", "--cost", "f=1",
                       "--costs", "x.json")
    assert code == 2 and "give one source of times" in err
    code, _, err = run(capsys, "simulate", "-p", "2")
    assert code == 2 and "NAME -p P -m M, or --schedule FILE" in err


def test_simulate_schedule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--schedule reads a JSON or PyTorch CSV schedule and simulates it like the generated one."""
    formats = pytest.importorskip("pipeblocks.ir.formats")
    for name, fmt, ext in (("zb-h1", "json", "json"), ("zb-v", "torch-csv", "csv")):
        sched = generate(name, 3, 5)
        path = tmp_path / f"s.{ext}"
        path.write_text(formats.dumps(sched, fmt))
        code, out, _ = run(capsys, "simulate", "--schedule", str(path), "--json")
        assert code == 0 and last_json(out)["makespan"] == simulate(sched).makespan
        assert last_json(out)["placement"] == sched.spec.placement.value


def test_simulate_schedule_file_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --schedule FILE, -p/-m that agree with the file are accepted, ones that disagree
    are refused naming both values, --placement is for CSVs only, NAME and FILE exclude."""
    formats = pytest.importorskip("pipeblocks.ir.formats")
    sched = generate("v-half", 4, 8)
    csv, js = tmp_path / "s.csv", tmp_path / "s.json"
    csv.write_text(formats.dumps(sched, "torch-csv"))
    js.write_text(formats.dumps(sched, "json"))
    code, out, _ = run(capsys, "simulate", "--schedule", str(csv), "-p", "4", "-m", "8",
                       "--placement", "v", "--stages-per-rank", "2", "--json")
    assert code == 0 and last_json(out)["makespan"] == simulate(sched).makespan
    for argv, fragment in ((["--schedule", str(js), "-p", "3"], "-p 3 disagrees with"),
                           (["--schedule", str(js), "--placement", "v"],
                            "--placement only applies to PyTorch CSV"),
                           (["1f1b", "--schedule", str(js)], "NAME or --schedule FILE, not both"),
                           (["1f1b", "-p", "4"], "simulate NAME needs -m"),
                           (["1f1b", "-p", "4", "-m", "8", "--placement", "v"],
                            "--placement only applies to --schedule")):
        code, out, err = run(capsys, "simulate", *argv)
        assert code == 2 and fragment in err and not out, (argv, err)


def test_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    """compare lists every applicable generator sorted by bubble, with formulas where known,
    and the others with the reason they do not apply."""
    code, out, _ = run(capsys, "compare", "-p", "4", "-m", "6", "--json")
    assert code == 0
    obj = last_json(out)
    rows, skipped = obj["schedules"], obj["not_applicable"]
    assert {r["name"] for r in rows} | {s["name"] for s in skipped} == set(names())
    rates = [r["bubble_rate"] for r in rows]
    assert rates == sorted(rates)
    one = next(r for r in rows if r["name"] == "1f1b")
    assert one["formula_bubble_rate"] == pytest.approx(3 / 9) == one["bubble_rate"]
    assert one["p2p_transfers"] == 2 * 3 * 6 and one["peak_fraction"] == 1.0
    inter = next(s for s in skipped if s["name"] == "interleaved-1f1b")
    assert "num_microbatches % num_ranks == 0" in inter["reason"]


def test_compare_with_a_per_stage_costs_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A costs file with p entries times the one-chunk generators with its per-stage times and
    lists the two-chunk ones as not applicable (wrong stage count); 2p entries the reverse; a
    file that fits no generator is one line, exit 2."""
    def costs(n: int) -> str:
        path = tmp_path / f"c{n}.json"
        path.write_text(json.dumps({"time_unit": "ms", "stages": [{"f": 1, "b": 2, "w": 1}] * (n - 1)
                                   + [{"f": 3, "b": 4, "w": 2}], "comm": 0.25}))
        return str(path)

    for n, v in ((4, 1), (8, 2)):
        code, out, _ = run(capsys, "compare", "-p", "4", "-m", "8", "--costs", costs(n), "--json")
        assert code == 0
        obj = last_json(out)
        assert obj["schedules"] and all(r["stages_per_rank"] == v for r in obj["schedules"])
        assert all("the costs do not fit it" in s["reason"] for s in obj["not_applicable"]
                   if "stages" in s["reason"])
        name = obj["schedules"][0]["name"]
        want = simulate(generate(name, 4, 8), load_costs(costs(n))).makespan
        assert obj["schedules"][0]["makespan"] == want
    code, _, err = run(capsys, "compare", "-p", "4", "-m", "8", "--costs", costs(5))
    assert code == 2 and "'stages' has 5 entries" in err and len(err.strip().splitlines()) == 1


def test_compare_text(capsys: pytest.CaptureFixture[str]) -> None:
    """The text table has a header, a row per schedule and the not-applicable list."""
    code, out, _ = run(capsys, "compare", "-p", "4", "-m", "6", "--cost", "f=1,b=1,w=1,comm=0.1")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["schedule", "v", "formula", "bubble"]
    assert "not applicable:" in out and "  interleaved-1f1b: " in out
    row = next(line for line in lines if line.startswith("1f1b "))
    assert row.split()[2] == "-"  # no closed form once transfers cost time


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Both commands have --help."""
    for cmd in ("simulate", "compare"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "--json" in capsys.readouterr().out
