"""Inputs that try to break pipeblocks, and the checks that every one of them is handled.

Shared by the tests beside this module and by ``docs/make_reliability.py``, which runs the same
generators with fixed seeds and counts the outcomes for docs/reliability.md. Every generator
takes a :class:`random.Random`: hypothesis drives it in the tests (``st.randoms()``, so a
failure shrinks), a seed drives it in the script.

- :func:`run_cli` runs ``pipeblocks ...`` in this process; :func:`failure_problems` says what
  is wrong with how a refused input was reported (exit 1 or 2, one line on stderr that starts
  with ``pipeblocks``, never a traceback).
- :func:`bad_schedule_file`, :func:`bad_costs_file` and :func:`random_argv` make malformed
  files and argument lists.
- Damaged schedules that still parse come from :mod:`mutations` (the validator's fuzz).

    >>> import random
    >>> name, data, must_fail = bad_costs_file(random.Random(3), num_stages=2, num_ranks=2)
    >>> isinstance(data, bytes) and name.startswith("costs-")
    True
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mutations import mutate_schedule, rule_oracle

from pipeblocks.cli.main import build_parser, main
from pipeblocks.generators import generate, names
from pipeblocks.ir import Schedule
from pipeblocks.ir.formats import json_io, torch_csv

__all__ = [
    "Outcome", "run_cli", "failure_problems", "no_launch",
    "bad_schedule_file", "bad_costs_file", "random_argv", "near_valid_argv", "write_fixtures",
    "commands", "BASE_SCHEDULES",
]

# --- running the command line -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one ``pipeblocks`` run did: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


def run_cli(argv: Sequence[str], cwd: str | Path | None = None) -> Outcome:
    """Run ``pipeblocks argv`` in this process, in folder ``cwd`` (fuzzed arguments name
    relative output files: they must land there). Any exception but SystemExit propagates:
    that is the traceback a user would see, and the tests fail on it."""
    out, err = io.StringIO(), io.StringIO()
    here = contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()
    with here, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's usage errors and --help
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Outcome(code, out.getvalue(), err.getvalue())


# Lines a refusal may add under its first line: the grid of a ScheduleError ("rank 3 |...")
# and the note on PyTorch's letters that `validate` adds for CSV files.
_EXTRA_LINE = re.compile(r"^(rank \d+ *\||note: )")


def failure_problems(o: Outcome) -> list[str]:
    """What is wrong with the report of a refused input; [] when it is one clean error."""
    problems = []
    if o.code not in (1, 2):
        problems.append(f"exit code {o.code}, expected 1 (invalid) or 2 (usage)")
    if "Traceback" in o.err:
        problems.append("a traceback on stderr")
    lines = o.err.rstrip("\n").split("\n")
    if not o.err.strip():
        problems.append("nothing on stderr")
    elif not (lines[0].startswith("pipeblocks") and "error: " in lines[0]):
        problems.append(f"first stderr line is not 'pipeblocks...: error: ...': {lines[0][:120]!r}")
    else:
        odd = [line for line in lines[1:] if not _EXTRA_LINE.match(line)]
        if odd:
            problems.append(f"{len(odd)} more stderr lines, e.g. {odd[0][:120]!r}")
    return problems


@dataclass(frozen=True, slots=True)
class _Launched:
    ok: bool
    codes: list[int]
    fault: str | None


@contextlib.contextmanager
def no_launch() -> Iterator[list[list[str]]]:
    """Within: ``pipeblocks train`` checks its options but starts no process (the argument
    fuzz is about refusing bad options, not training). Yields the commands it would start."""
    import importlib

    # by sys.modules: pipeblocks.runtime re-exports the function launch under the same name
    launch_mod = importlib.import_module("pipeblocks.runtime.launch")

    started: list[list[str]] = []

    def fake(cmd: list[str], num: int, **_: Any) -> _Launched:
        started.append(list(cmd))
        return _Launched(True, [0] * num, None)

    real = launch_mod.launch
    launch_mod.launch = fake  # type: ignore[assignment]
    try:
        yield started
    finally:
        launch_mod.launch = real


# --- malformed files ----------------------------------------------------------------------------

# The valid files the malformed ones start from: (generator, p, m, v, format).
BASE_SCHEDULES = (
    ("zb-h1", 3, 4, None, "torch-csv"),
    ("zb-v", 2, 4, None, "torch-csv"),
    ("interleaved-1f1b", 2, 4, 2, "json"),
    ("v-half", 2, 4, None, "json"),
)
_EXT = {"torch-csv": ".csv", "json": ".json"}

# Values no numeric field of a schedule or costs file accepts (JSON text).
BAD_JSON_VALUES = (
    "NaN", "Infinity", "-Infinity", "-1", "-2.5", "1e400", "9" * 400, "9" * 5000, '"1"', '"é"',
    "null", "true", "false", "[]", "{}", "[1]", '{"a": 1}',
)
# Fragments spliced into text at random.
JUNK = (
    "9" * 19, "9" * 400, "-1", "NaN", "1e999", "é", "\u2028", "\ufeff", "\u200b", "٣", "３",
    "\x00", "\x7f", ",", ";", "\n", "\r\n", '"', "[", "]", "{", "}", "(", ")OVERLAP_F_B", "I",
    "B", "BW", "SEND_F", "1.5", "true", "null", " ", "\t", "🙂",
)
_BAD_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80")


def _base(rng: random.Random) -> tuple[Schedule, str, str]:
    name, p, m, v, fmt = rng.choice(BASE_SCHEDULES)
    s = generate(name, p, m, v)
    return s, fmt, torch_csv.dumps(s) if fmt == "torch-csv" else json_io.dumps(s)


def _splice(rng: random.Random, text: str, edits: int) -> str:
    for _ in range(edits):
        i = rng.randint(0, len(text))
        j = min(len(text), i + rng.randint(0, 4))
        text = text[:i] + rng.choice(JUNK) + text[j:]
    return text


def _json_paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a number in a decoded JSON document."""
    if isinstance(obj, dict):
        return [q for k, v in obj.items() for q in _json_paths(v, (*path, k))]
    if isinstance(obj, list):
        return [q for i, v in enumerate(obj) for q in _json_paths(v, (*path, i))]
    return [path] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


_MARK = "@@pipeblocks-fuzz@@"


def _replace_at(doc: Any, path: tuple[Any, ...], raw_json: str) -> str:
    """``doc`` as JSON text with the value at ``path`` replaced by the raw JSON ``raw_json``."""
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = _MARK
    return json.dumps(doc).replace(json.dumps(_MARK), raw_json)


def _common_damage(rng: random.Random, text: str, kind: str) -> tuple[bytes, bool] | None:
    """The kinds of damage any text file can suffer: (bytes, must fail) or None."""
    if kind == "empty":
        return b"", True
    if kind == "blank":
        return rng.choice([" ", "\n", "\n\n\n", "\t \r\n", "\ufeff"]).encode(), True
    if kind == "binary":
        return rng.randbytes(rng.randint(1, 64)), True
    if kind == "bad-utf8":
        i = rng.randint(0, len(text))
        return text[:i].encode() + rng.choice(_BAD_UTF8) + text[i:].encode(), True
    if kind == "truncated":
        cut = rng.randint(0, len(text.rstrip()) - 1)
        # JSON cut short never parses; a CSV cut between rows is a smaller pipeline, which
        # may be valid (zb-h1's first two rows for p=3 are a valid p=2 schedule)
        whole_rows = text[cut:cut + 1] == "\n" or text[:cut].endswith("\n")
        return text[:cut].encode(), text.startswith("{") or not whole_rows
    if kind == "deep":
        depth = rng.choice([65, 1000, 100_000])
        opener = rng.choice(["[", '{"a":', '{"stages":'])
        return (opener * depth).encode(), True
    if kind == "spliced":
        return _splice(rng, text, rng.randint(1, 3)).encode(), False
    if kind == "bom":  # a byte-order mark in front of a good file: still good
        return b"\xef\xbb\xbf" + text.encode(), False
    return None


SCHEDULE_DAMAGE = ("empty", "blank", "binary", "bad-utf8", "truncated", "deep", "spliced", "bom",
                   "huge-number", "bad-spec-value", "wrong-top", "long-line", "mutated")


def bad_schedule_file(rng: random.Random) -> tuple[str, bytes, bool]:
    """A damaged schedule file: (file name, content, must fail). ``must fail`` is False where
    the damage may leave a readable, valid schedule (random splices, a byte-order mark)."""
    schedule, fmt, text = _base(rng)
    kind = rng.choice(SCHEDULE_DAMAGE)
    name = f"sched-{kind}{_EXT[fmt]}"
    common = _common_damage(rng, text, kind)
    if common is not None:
        return (name, *common)
    if kind == "huge-number":  # an index of 19 to 5000 digits: out of range or absurd
        start = text.find('"spec"') + 1  # JSON: not the digits of the name ("1f1b")
        numbers = [m for m in re.finditer(r"\d+", text) if m.start() >= start]
        hit = rng.choice(numbers)
        digits = "9" * rng.choice([19, 30, 400, 5000])
        return name, (text[:hit.start()] + digits + text[hit.end():]).encode(), True
    if kind == "bad-spec-value" and fmt == "json":
        doc = json.loads(text)
        field = rng.choice(["num_ranks", "num_microbatches", "stages_per_rank", "placement"])
        value = rng.choice(BAD_JSON_VALUES + ("0", '"loop-ish"', "2.0"))
        return name, _replace_at(doc, ("spec", field), value).encode(), True
    if kind == "wrong-top" and fmt == "json":
        return name, rng.choice(["[]", "1", '"x"', "null", "true", '{"format": 1}']).encode(), True
    if kind == "long-line":
        cell = "0F0" if fmt == "torch-csv" else '"0F0"'
        line = ",".join([cell] * rng.choice([10_000, 100_000]))
        body = line + "\n" if fmt == "torch-csv" else (
            '{"format": "pipeblocks-schedule", "version": 1, "spec": {"num_ranks": 1, '
            '"num_microbatches": 1, "stages_per_rank": 1, "placement": "loop"}, '
            f'"programs": [[{line}]]}}')
        return name, body.encode(), True
    # "mutated" (and the JSON-only kinds on a CSV base): a well-formed file of a broken schedule
    bad = mutate_schedule(rng, schedule, rng.randint(1, 3))
    if rule_oracle(bad) is None:
        bad = mutate_schedule(rng, schedule, 1, kinds=("drop",))
    out = torch_csv.dumps(bad) if fmt == "torch-csv" else json_io.dumps(bad)
    return name, out.encode(), True


COSTS_DAMAGE = ("empty", "blank", "binary", "bad-utf8", "truncated", "deep", "spliced", "bom",
                "bad-value", "missing-field", "unknown-field", "stage-count", "wrong-top")


def _costs_doc(rng: random.Random, num_stages: int, num_ranks: int) -> dict[str, Any]:
    if rng.random() < 0.3:
        return {"transformer": {
            "model": {"layers": 2 * num_stages, "hidden": 64, "heads": 4, "seq_len": 128,
                      "vocab": 1000, "microbatch_size": 1},
            "machine": {"flops": 1e12, "bandwidth": 1e10, "latency": 1e-5}}}
    doc: dict[str, Any] = {"stages": [
        {"f": 1.0 + s / 10, "b": 1.5, "w": 1.0, "mem_f": 1.0, "mem_w": 0.5}
        for s in range(num_stages)], "comm": 0.1, "time_unit": "ms"}
    if rng.random() < 0.5:
        doc["links"] = [[0.0 if i == j else 0.1 for j in range(num_ranks)]
                        for i in range(num_ranks)]
    if rng.random() < 0.5:
        for s, entry in enumerate(doc["stages"]):
            entry["stage"] = s
        rng.shuffle(doc["stages"])
    return doc


def bad_costs_file(rng: random.Random, num_stages: int, num_ranks: int) -> tuple[str, bytes, bool]:
    """A damaged costs file for a schedule of that many stages and ranks: (file name, content,
    must fail)."""
    doc = _costs_doc(rng, num_stages, num_ranks)
    text = json.dumps(doc, indent=rng.choice([None, 2]))
    kind = rng.choice(COSTS_DAMAGE)
    name = f"costs-{kind}.json"
    common = _common_damage(rng, text, kind)
    if common is not None:
        return (name, *common)
    if kind == "bad-value":
        path, value = rng.choice(_json_paths(doc)), rng.choice(BAD_JSON_VALUES)
        # An infinite link bandwidth is a legal machine (transfers cost only latency).
        legal = path[-1] == "bandwidth" and value in ("Infinity", "1e400")
        return name, _replace_at(doc, path, value).encode(), not legal
    if kind == "missing-field":
        if "transformer" in doc:
            part = rng.choice(["model", "machine"])
            keys = {"model": ["layers", "hidden", "heads", "seq_len"], "machine": ["flops"]}[part]
            victim = doc["transformer"] if rng.random() < 0.3 else doc["transformer"][part]
            victim.pop(part if victim is doc["transformer"] else rng.choice(keys))
        else:
            rng.choice(doc["stages"]).pop(rng.choice(["f", "b", "w"]))
        return name, json.dumps(doc).encode(), True
    if kind == "unknown-field":
        objects = [doc] + ([doc["transformer"], doc["transformer"]["model"],
                            doc["transformer"]["machine"]] if "transformer" in doc
                           else list(doc["stages"]))
        rng.choice(objects)[rng.choice(["F", "fwd", "é", "", "stages ", "seq"])] = 1
        return name, json.dumps(doc).encode(), True
    if kind == "stage-count" and "stages" in doc:
        stages = doc["stages"]
        if rng.random() < 0.5:
            stages.pop(rng.randrange(len(stages)))
        else:
            stages.append(dict(stages[0]))
        return name, json.dumps(doc).encode(), True
    return name, rng.choice(["[]", "1", '"x"', "null", "[{}]", '{"stages": []}']).encode(), True


# --- argument lists -----------------------------------------------------------------------------

# Values given to options and positionals: good ones, bad ones and absurd ones. ``{dir}`` is a
# folder the caller provides (pictures and files are written there).
VALUES = (
    "1", "2", "3", "4", "0", "-1", "1e3", "1.5", "nan", "inf", "-inf", "", " ", "x", "é", "٣",
    "0x10", "1_000", "9" * 20, "9" * 400, "--", "-", "f=1,b=2,w=1,comm=0.1", "f=nan", "f=-1,b=x",
    "comm=inf", "=", ",", ",,", "f=1e400", "mem_f=0", "layers=4,hidden=64,heads=4,seq=128",
    "layers=0", "layers=1e300,hidden=1,heads=1,seq=1", "flops=1e12", "flops=0,bandwidth=-1",
    "flops=1e-320", "1f1b,zb-v", ",,,", "1f1b,nope", "unit", "transformer", "loop", "v",
    "torch-csv", "json", "ascii", "chrome-trace", "tiny-gpt", "1,1,1,1", "8,0", "a,b",
    "{dir}/out.png", "{dir}/out.svg", "{dir}/out.txt", "{dir}/missing/out.png", "{dir}",
    "{dir}/good.csv", "{dir}/good.json", "{dir}/bad.csv", "{dir}/bad.json", "{dir}/costs.json",
    "{dir}/bad-costs.json", "{dir}/nothing.json", "/dev/null",
)
UNKNOWN_OPTIONS = ("--bogus", "-Z", "--rank", "--p", "---", "--json=1", "-pp")


@dataclass(frozen=True, slots=True)
class _Option:
    flags: tuple[str, ...]
    takes_value: bool
    choices: tuple[str, ...]


def _options(parser: argparse.ArgumentParser) -> tuple[list[_Option], int]:
    """The subcommand's options and its number of positionals, read from the real parser."""
    opts, positionals = [], 0
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            positionals += 1
            continue
        choices = tuple(str(c) for c in action.choices) if action.choices else ()
        opts.append(_Option(tuple(action.option_strings), action.nargs != 0, choices))
    return opts, positionals


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name (what ``pipeblocks --help`` lists)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def random_argv(rng: random.Random, command: str, folder: Path) -> list[str]:
    """A random argument list for ``pipeblocks command``: its own options (and a few unknown
    ones), each with a value that may be good, bad or absurd."""
    opts, positionals = _options(commands()[command])
    argv = [command]
    names_ = names()
    for _ in range(rng.randint(0, 7)):
        r = rng.random()
        if r < 0.12:
            argv.append(rng.choice(UNKNOWN_OPTIONS))
            continue
        if r < 0.3 and positionals:
            argv.append(rng.choice(names_ + ["nope", "1F1B", "", "{dir}/good.csv"]))
            continue
        opt = rng.choice(opts)
        argv.append(rng.choice(opt.flags))
        if opt.takes_value:
            pool = list(VALUES) + list(opt.choices) * 3
            if "-p" in opt.flags or "-m" in opt.flags or "--ranks" in opt.flags:
                pool += ["1", "2", "3", "4", "5"] * 3
            if "--schedule" in opt.flags and command == "train":
                pool += names_
            argv.append(rng.choice(pool))
    return [a.replace("{dir}", str(folder)) for a in argv]


# One good command line per subcommand: :func:`near_valid_argv` damages one or two tokens, so
# the fuzz reaches the handlers behind argparse (random lists rarely get past it).
GOOD_ARGV = (
    ("list", "--json"),
    ("show", "1f1b", "-p", "2", "-m", "3"),
    ("show", "zb-v", "-p", "2", "-m", "4", "--timed", "--width", "40", "--cost", "f=1,b=2,w=1"),
    ("export", "zb-h1", "-p", "2", "-m", "3", "--format", "json", "-o", "{dir}/out.json"),
    ("validate", "{dir}/good.csv", "--json"),
    ("simulate", "1f1b", "-p", "2", "-m", "3", "--cost", "f=1,b=1,w=1,comm=0.1", "--bubbles"),
    ("simulate", "--schedule", "{dir}/good.json", "--costs", "{dir}/costs.json", "--json"),
    ("simulate", "gpipe", "-p", "2", "-m", "2", "--model", "layers=4,hidden=64,heads=4,seq=128",
     "--machine", "flops=1e12"),
    ("compare", "-p", "2", "-m", "4", "--json"),
    ("draw", "1f1b", "-p", "2", "-m", "2", "-o", "{dir}/out.svg"),
    ("train", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "2", "--steps", "1"),
)


def near_valid_argv(rng: random.Random, folder: Path) -> list[str]:
    """A good command line with one or two tokens replaced, dropped, repeated or added."""
    argv = list(rng.choice(GOOD_ARGV))
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(1, len(argv)) if len(argv) > 1 else 1
        r = rng.random()
        if r < 0.55 and i < len(argv):
            argv[i] = rng.choice(VALUES + tuple(names()))
        elif r < 0.7 and i < len(argv):
            argv.pop(i)
        elif r < 0.85:
            argv.insert(i, rng.choice(UNKNOWN_OPTIONS))
        else:
            argv += argv[i:i + 2]  # an option given twice
    return [a.replace("{dir}", str(folder)) for a in argv]


def write_fixtures(folder: Path) -> None:
    """The files that :data:`VALUES` names, in ``folder``."""
    s = generate("1f1b", 2, 3)
    (folder / "good.csv").write_text(torch_csv.dumps(s))
    (folder / "good.json").write_text(json_io.dumps(s))
    (folder / "bad.csv").write_text("0F0,0X1\n")
    (folder / "bad.json").write_text('{"format": "pipeblocks-schedule", "version": 1}')
    stages = [{"f": 1, "b": 1, "w": 1}] * 2
    (folder / "costs.json").write_text(json.dumps({"stages": stages, "time_unit": "ms"}))
    (folder / "bad-costs.json").write_text('{"stages": [{"f": NaN}]}')
