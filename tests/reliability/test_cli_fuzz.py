"""File and argument fuzz: bad input gives one clear line and exit 1 or 2, never a traceback.

tests/ir/test_formats_fuzz.py fuzzes the schedule readers as a library (every problem is a
located FormatError). Here the whole command line is under test, in this process for speed
(:func:`fuzzkit.run_cli`; an exception escaping ``main`` fails the test, as a traceback would
greet a user) plus a few real subprocesses: damaged schedule files and costs files through
every subcommand that reads them, and random or nearly valid argument lists for every
subcommand. ``pipeblocks train`` checks its options here but starts no process
(:func:`fuzzkit.no_launch`).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzzkit import (
    GOOD_ARGV,
    Outcome,
    bad_costs_file,
    bad_schedule_file,
    commands,
    failure_problems,
    near_valid_argv,
    no_launch,
    random_argv,
    run_cli,
    write_fixtures,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipeblocks.generators import generate
from pipeblocks.ir.formats import torch_csv

BIN = Path(sys.executable).parent / "pipeblocks"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the good and bad files the argument pools name."""
    path = tmp_path_factory.mktemp("fuzz")
    write_fixtures(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _no_processes() -> Iterator[None]:
    with no_launch():
        yield


@pytest.fixture(scope="module", autouse=True)
def _no_stray_files() -> Iterator[None]:
    """Fuzzed arguments name output files (``-o unit``): they must land in the fuzz folder,
    never in the directory the tests run from."""
    before = set(os.listdir())
    yield
    assert set(os.listdir()) - before == set()


def refused(o: Outcome) -> None:
    """``o`` is a clean refusal: exit 1 or 2, one ``pipeblocks...: error:`` line."""
    assert not failure_problems(o), (failure_problems(o), o.err[-2000:])


def handled(o: Outcome, must_fail: bool) -> None:
    """Success (where allowed) or a clean refusal; the outcome is counted for the statistics."""
    event(f"exit {o.code}")
    if o.code == 0 and not must_fail:
        return
    refused(o)


# --- damaged files through the commands that read them -------------------------------------------

@given(st.randoms(use_true_random=False), st.sampled_from(["validate", "simulate", "train"]))
def test_damaged_schedule_files(folder: Path, rng: random.Random, command: str) -> None:
    """Empty, blank, binary, bad UTF-8, truncated, deeply nested, spliced, huge-numbered, wrong
    typed, very long or well-formed-but-invalid schedule files: a schedule or a clean refusal."""
    name, data, must_fail = bad_schedule_file(rng)
    path = folder / name
    path.write_bytes(data)
    argv = {"validate": ["validate", str(path)],
            "simulate": ["simulate", "--schedule", str(path)],
            "train": ["train", "--schedule-file", str(path), "--ranks", "2", "--steps", "1"]}
    o = run_cli(argv[command])
    if command == "train" and o.code == 2 and "is a schedule for" in o.err:
        must_fail = True  # a valid file for another number of ranks: refused, as it should be
    handled(o, must_fail)


COSTS_TARGETS = (("zb-h1", 4, None), ("zb-v", 2, None), ("interleaved-1f1b", 2, 2))


@given(st.randoms(use_true_random=False), st.sampled_from(COSTS_TARGETS),
       st.sampled_from(["simulate", "show"]))
def test_damaged_costs_files(folder: Path, rng: random.Random,
                             target: tuple[str, int, int | None], command: str) -> None:
    """Damaged per-stage and transformer costs files (wrong types, NaN, inf, huge integers,
    missing or unknown fields, a stage too many or too few, ...): refused cleanly, or used."""
    gen, p, v = target
    spec = generate(gen, p, 4, v).spec
    name, data, must_fail = bad_costs_file(rng, spec.num_stages, spec.num_ranks)
    path = folder / name
    path.write_bytes(data)
    argv = [command, gen, "-p", str(p), "-m", "4", "--costs", str(path)]
    if v is not None:
        argv += ["--stages-per-rank", str(v)]
    if command == "show":
        argv += ["--timed", "--width", "60"]
    handled(run_cli(argv), must_fail)


# --- arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(commands()))
@settings(max_examples=25)  # per subcommand: 25 x every subcommand in all
@given(rng=st.randoms(use_true_random=False))
def test_random_arguments(folder: Path, command: str, rng: random.Random) -> None:
    """Random lists of the subcommand's own options (and unknown ones) with good, bad and
    absurd values (0, -1, nan, inf, 10**400, unicode digits, empty, missing files...)."""
    handled(run_cli(random_argv(rng, command, folder), cwd=folder), must_fail=False)


@given(rng=st.randoms(use_true_random=False))
def test_nearly_valid_arguments(folder: Path, rng: random.Random) -> None:
    """A good command line with one or two tokens damaged reaches the handlers behind
    argparse: it works or is refused cleanly."""
    handled(run_cli(near_valid_argv(rng, folder), cwd=folder), must_fail=False)


def test_the_good_command_lines_work(folder: Path) -> None:
    """The undamaged command lines the fuzz starts from all succeed (so a refusal of a damaged
    one is caused by the damage)."""
    for argv in GOOD_ARGV:
        o = run_cli([a.replace("{dir}", str(folder)) for a in argv], cwd=folder)
        assert o.code == 0, (argv, o.err)


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_subcommand_refuses_missing_and_unknown_arguments(command: str) -> None:
    """No arguments (where some are needed) and an unknown option: exit 2 and one line;
    ``--help`` still works."""
    o = run_cli([command, "--no-such-option"])
    refused(o)
    assert o.code == 2
    o = run_cli([command])
    if command != "list":
        refused(o)
        assert o.code == 2
    h = run_cli([command, "--help"])
    assert h.code == 0 and h.out.startswith("usage: pipeblocks " + command)


def _costs(folder: Path, name: str, text: str | bytes) -> str:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


CASES = [
    # (argv, exit code, message fragment); {dir} is the fixture folder, {c:TEXT} a costs file
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs", "{c:\xff\xfe}"], 1, "not UTF-8"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs", "{c:" + "[" * 100000 + "}"], 1,
     "nested too deep"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs",
      '{c:{"stages": [{"f": ' + "9" * 5000 + ', "b": 1, "w": 1}]}}'], 1, "4300 digits"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs",
      '{c:{"stages": [{"f": ' + "9" * 400 + ', "b": 1, "w": 1}]}}'], 1, "finite number"),
    (["simulate", "1f1b", "-p", "1", "-m", "2", "--costs",
      '{c:{"stages": [{"f": NaN, "b": 1, "w": 1}]}}'], 1, "'stages[0].f' must be a finite"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs", "{c:}"], 1, "not valid JSON"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs",
      '{c:{"stages": [{"f": 1, "b": 1, "w": 1}], "time_unit": "ms"}}'], 2,
     "has 1 entries but the schedule has 2"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs",
      '{c:{"transformer": {"model": {"layers": ' + "9" * 40 + ', "hidden": 8, "heads": 2, '
      '"seq_len": 8}, "machine": {"flops": 1}}}}'], 1, "integer in 1..2**53"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--costs",
      '{c:{"transformer": {"model": {"layers": 4}, "machine": {"flops": 1}}}}'], 1,
     "missing 3 required"),
    (["simulate", "gpipe", "-p", "2", "-m", "2", "--model", "layers=4", "--memory-model",
      "transformer"], 2, "--model lacks hidden, heads, seq"),
    (["simulate", "gpipe", "-p", "2", "-m", "2", "--model", "layers=4,hidden=8,heads=2,seq=8",
      "--machine", ",,"], 2, "--machine lacks flops"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--cost", "f=1e308,b=1e308,w=1e308"], 2,
     "is inf"),
    (["show", "1f1b", "-p", "2", "-m", "2", "--timed", "--width", "9" * 20], 2, "at most"),
    (["show", "1f1b", "-p", "9" * 20, "-m", "1"], 2, "(stage, microbatch) pairs"),
    (["compare", "-p", "3", "-m", "9" * 20, "--json"], 0, ""),  # every generator: not applicable
    (["draw", "1f1b", "-p", "2", "-m", "2", "-o", "{dir}/x.png", "--dpi", "1e9"], 2, "--dpi"),
    (["draw", "1f1b", "-p", "2", "-m", "2", "-o", "{dir}/x.png", "--width", "inf"], 2,
     "--width"),
    (["draw", "1f1b", "-p", "2", "-m", "2", "-o", "{dir}/x.png", "--dpi", "1200", "--width",
      "200"], 2, "pixel PNG is too large"),
    (["pareto", "-p", "4", "-m", "8", "--top", "nan"], 2, "--top: expected a finite number"),
    (["pareto", "-p", "4", "-m", "8", "--top", "0"], 2, "--top: expected a finite number > 0"),
    (["simulate", "1f1b", "-p", "2", "-m", "2", "--bubbles", "--capacity", "-1"], 2,
     "--capacity: expected a finite number >= 0"),
    (["draw", "1f1b", "-p", "2", "-m", "2", "-o", "{dir}/x.png", "--width", "nan"], 2,
     "--width: expected a finite number > 0"),
    (["simulate", "--schedule", "{dir}/no-such-file"], 1, "cannot read the file"),
    (["simulate", "--schedule", "/dev/null"], 1, "empty input"),
    (["draw", "--schedule", "{dir}/no-such-file", "-o", "{dir}/x.svg"], 1, "cannot read"),
    (["validate", "/dev/null"], 1, "is not a regular file"),
    (["validate", "{dir}"], 1, "is a directory"),
    (["train", "--schedule", "nope", "--ranks", "2", "--microbatches", "2"], 2,
     "unknown schedule 'nope'"),
    (["train", "--schedule-file", "{dir}/bad.csv", "--ranks", "2"], 1, "bad.csv:1:5"),
    (["train", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "2", "--layout", "a,b"],
     2, "--layout"),
]


@pytest.mark.parametrize(("argv", "code", "fragment"), CASES,
                         ids=[f"{i}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_known_bad_inputs(folder: Path, argv: list[str], code: int, fragment: str) -> None:
    """Hand-made bad files and arguments, each of which once crashed, hung or said something
    vague: the exact exit code and the reason."""
    args = []
    for i, a in enumerate(argv):
        if a.startswith("{c:"):
            a = _costs(folder, f"case{i}.json", a[3:-1].encode("latin-1"))
        args.append(a.replace("{dir}", str(folder)))
    o = run_cli(args, cwd=folder)
    assert o.code == code, o.err
    if code:
        refused(o)
        assert fragment in o.err, o.err


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_real_processes_print_one_line(folder: Path) -> None:
    """As a real command (not in-process): binary costs, a bad schedule file, bad numbers and
    a bad schedule name for train all exit 1 or 2 with one line and no traceback."""
    binary = _costs(folder, "binary.json", bytes(range(256)))
    runs = [
        (_run("simulate", "1f1b", "-p", "2", "-m", "2", "--costs", binary, cwd=folder), 1),
        (_run("validate", str(folder / "bad.json"), cwd=folder), 1),
        (_run("show", "zb-v", "-p", "nan", "-m", "2", cwd=folder), 2),
        (_run("train", "--schedule", "nope", "--ranks", "2", "--microbatches", "2",
              cwd=folder), 2),
    ]
    for out, code in runs:
        refused(Outcome(out.returncode, out.stdout, out.stderr))
        assert out.returncode == code, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_csv_with_unicode_digits_is_refused_at_the_cell(folder: Path) -> None:
    """Python's int() reads '٣' as 3, the CSV reader does not: such a cell is refused with its
    line and column (the fuzz splices these digits in; here the exact place is checked)."""
    text = torch_csv.dumps(generate("1f1b", 2, 4)).replace("0F3", "0F٣")
    path = folder / "unicode.csv"
    path.write_text(text)
    o = run_cli(["validate", str(path)])
    refused(o)
    line, col = 1, text.split("\n")[0].index("0F٣") + 1
    assert o.code == 1 and f"unicode.csv:{line}:{col}: cell '0F٣'" in o.err, o.err


def test_a_400_digit_size_is_refused_in_one_line() -> None:
    """-m with 400 digits (beyond float range: the size message once overflowed formatting it)
    is a usage error naming the size limit."""
    o = run_cli(["simulate", "1f1b", "-p", "2", "-m", "9" * 400])
    refused(o)
    assert o.code == 2 and "about 10**400 (stage, microbatch) pairs" in o.err
