"""Shared pieces of the command line: spec and cost options, JSON output, error exits.

Exit codes: 0 success, 1 failed (invalid input: a schedule or file that breaks a rule, a file
that cannot be read or written, a missing optional dependency), 2 usage (bad arguments or
option values). Library errors become one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from pipeblocks.checks import require
from pipeblocks.errors import MissingDependencyError, OutputError, SpecError
from pipeblocks.sim.costs import StageCosts, UniformCosts

__all__ = ["one_line_errors", "add_spec_args", "add_cost_args", "parse_cost", "cost_of",
           "emit_json", "die", "positive_int", "finite_float", "require_or_exit", "check_output",
           "write_output"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, with a message that names the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def finite_float(minimum: float = 0.0, *, strict: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number >= ``minimum`` (> with ``strict``), named when refused.

    >>> finite_float(0.0, strict=True)("1.5")
    1.5
    >>> finite_float()("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number >= 0, got 'nan'
    """
    sign = ">" if strict else ">="

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {sign} {minimum:g}, got {text!r}"
            )
        return value

    return parse


def add_spec_args(
    parser: argparse.ArgumentParser, *, name: bool = True, required: bool = True
) -> None:
    """NAME -p P -m M [--stages-per-rank V]; ``required=False``: -p and -m may be left out
    (a command that also takes a schedule file, :mod:`pipeblocks.cli.source`)."""
    if name:
        parser.add_argument("name", metavar="NAME", help="generator name (see `pipeblocks list`)")
    note = "" if required else " (with NAME)"
    parser.add_argument("-p", "--ranks", dest="p", type=positive_int, required=required,
                        help=f"number of pipeline ranks, one per device{note}")
    parser.add_argument("-m", "--microbatches", dest="m", type=positive_int, required=required,
                        help=f"number of microbatches per step{note}")
    parser.add_argument("--stages-per-rank", dest="v", type=positive_int, default=None,
                        help="model chunks per rank (default: what the generator needs)")


def add_cost_args(parser: argparse.ArgumentParser) -> None:
    """--cost f=..,b=..,w=..,comm=.. (per rank) or --stage-cost (the same keys, per stage)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--cost", default=None, metavar="f=F,b=B,w=W,comm=C",
        help="uniform PER-RANK times of one microbatch's F, B, W and one transfer; a rank "
        "holding v stages takes 1/v of each per stage (default f=1,b=1,w=1,comm=0)",
    )
    group.add_argument(
        "--stage-cost", default=None, metavar="f=F,b=B,w=W,comm=C",
        help="uniform PER-STAGE (model chunk) times, as profiles and papers give them, of a "
        "model cut into v stages per rank (key v=, default 2): never divided by v "
        "(--stage-cost f=1.5 is --cost f=3 at v=2); schedules with another v are left out",
    )


def parse_cost(text: str | None, *, per_stage: bool = False) -> UniformCosts | StageCosts:
    """``f=3,b=4,w=2,comm=0.5`` -> UniformCosts (per rank), or StageCosts with ``per_stage``;
    unknown keys and bad numbers are SpecErrors."""
    flag = "--stage-cost" if per_stage else "--cost"
    cls = StageCosts if per_stage else UniformCosts
    if not text:
        return cls()
    fields: dict[str, float | int] = {}
    allowed = ("f", "b", "w", "comm", "mem_f", "mem_w", *(("v",) if per_stage else ()))
    for part in text.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in allowed:
            raise SpecError(
                f"{flag} item {part!r} is not KEY=NUMBER with KEY in {', '.join(allowed)}; "
                f"write e.g. {flag} f=1,b=2,w=1,comm=0.1"
            )
        try:
            fields[k] = float(v)
        except ValueError:
            raise SpecError(f"{flag} {k}={v!r} is not a number") from None
    if "v" in fields:
        v = fields.pop("v")
        if v != int(v):
            raise SpecError(f"{flag} v={v:g} is not a whole number of stages per rank")
        fields["stages_per_rank"] = int(v)
    return cls(**fields)  # type: ignore[arg-type]


def cost_of(args: argparse.Namespace) -> UniformCosts | StageCosts:
    """The uniform costs --cost or --stage-cost give (per-rank unit costs when neither)."""
    if getattr(args, "stage_cost", None):
        return parse_cost(args.stage_cost, per_stage=True)
    return parse_cost(args.cost)


def check_output(path: str, flag: str = "-o") -> Path:
    """Refuse an output path that cannot be written, before the work (exit 1, as every failed
    write): its folder does not exist, or it is itself a folder."""
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file path, e.g. "
                          f"{out / ('out' + (out.suffix or '.json'))}")
    if not out.parent.is_dir():
        raise OutputError(f"{flag} {path}: folder {str(out.parent)!r} does not exist; create it "
                          f"(mkdir -p {out.parent}) or write elsewhere")
    return out


def write_output(path: str, text: str, flag: str = "-o") -> None:
    """Write ``text`` to ``path``; an OSError (permissions, a full disk) is an OutputError."""
    try:
        with open(check_output(path, flag), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write it: {e.strerror or e}") from None


def emit_json(obj: Any) -> None:
    """Print one JSON object on one line (the last line of stdout, for scripts)."""
    print(json.dumps(obj, sort_keys=False, default=str))


def die(message: str, code: int = 1) -> int:
    """Print ``pipeblocks: error: message`` on stderr and return ``code``."""
    print(f"pipeblocks: error: {message}", file=sys.stderr)
    return code


def require_or_exit(module: str, feature: str) -> None:
    """:func:`pipeblocks.checks.require` for an entry point outside :func:`main` (``python -m
    pipeblocks.train``): a missing dependency is one line on stderr and exit code 1."""
    try:
        require(module, feature)
    except MissingDependencyError as e:
        sys.exit(die(str(e), 1))


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make argparse's usage errors one line (``pipeblocks CMD: error: ...``), exit code 2."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser
