"""``pipeblocks validate FILE [--format F] [--json]``: check a schedule file.

Reads a PyTorch compute-only CSV or a pipeblocks JSON file and runs the validator. Exit codes:
0 valid (one ``valid: ...`` line), 1 invalid (the file cannot be read as a schedule, or the
schedule breaks a rule: the message names the rule, the rank, the position and shows the grid),
2 usage (a missing file, a bad option).

    $ pipeblocks export zb-h1 -p 4 -m 8 --format torch-csv -o zb-h1.csv
    $ pipeblocks validate zb-h1.csv
    valid: zb-h1.csv (torch-csv): p=4 m=8 v=1 placement=loop, 96 actions
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from pipeblocks.cli.common import die, emit_json, positive_int
from pipeblocks.errors import FormatError, ScheduleError
from pipeblocks.ir import validate
from pipeblocks.ir.formats import READABLE, detect, loads
from pipeblocks.ir.formats._text import read_text

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "validate", help="check a schedule file (PyTorch CSV or pipeblocks JSON)",
        description="Read a schedule file and check it: every pass present once, each stage on "
        "its rank, every dependency satisfiable. Exit 0 if valid, 1 if not, 2 on usage errors.",
        epilog="A PyTorch CSV stores no spec: the ranks are its rows, the stages and "
        "microbatches its largest indices, the placement the one the cells fit (loop, else v); "
        "--placement, --stages-per-rank and -m fix them instead.",
    )
    p.add_argument("file", metavar="FILE", help="the schedule file (.csv or .json)")
    p.add_argument("--format", dest="format", choices=READABLE, default=None,
                   help="file format (default: from the extension, else the content)")
    p.add_argument("--placement", choices=("loop", "v"), default=None,
                   help="the stage placement (torch-csv: default inferred; json: must agree)")
    p.add_argument("--stages-per-rank", dest="v", type=positive_int, default=None,
                   help="stages per rank (torch-csv: default (largest stage + 1) / ranks)")
    p.add_argument("-m", "--microbatches", dest="m", type=positive_int, default=None,
                   help="microbatches (torch-csv: default largest microbatch + 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = args.file
    if not os.path.isfile(path):
        why = ("is a directory" if os.path.isdir(path) else
               "is not a regular file" if os.path.exists(path) else "does not exist")
        return die(f"{path} {why}; give a schedule file (.csv or .json)", 1)
    given = {"placement": args.placement, "stages_per_rank": args.v, "num_microbatches": args.m}
    options = {k: v for k, v in given.items() if v is not None}
    report: dict[str, Any] = {"file": path}
    try:
        text = read_text(path)
        fmt = args.format or detect(text, path)
        report["format"] = fmt
        if fmt == "torch-csv":
            options.setdefault("name", os.path.basename(path))
        schedule = loads(text, fmt, path=path, **options)
        report.update(name=schedule.name, spec={
            "num_ranks": schedule.spec.num_ranks,
            "num_microbatches": schedule.spec.num_microbatches,
            "stages_per_rank": schedule.spec.stages_per_rank,
            "placement": schedule.spec.placement.value,
        }, num_actions=schedule.num_actions)
        validate(schedule)
    except FormatError as e:
        if args.json:
            emit_json({"valid": False, **report, "error": "format", "message": str(e),
                       "line": e.line, "column": e.column})
        return die(str(e), 1)
    except ScheduleError as e:
        if args.json:
            emit_json({"valid": False, **report, "error": "schedule", "rule": e.rule,
                       "rank": e.rank, "position": e.position, "message": e.headline})
        note = ("\nnote: the message uses pipeblocks letters: B is PyTorch's I, BW is PyTorch's "
                "B" if report.get("format") == "torch-csv" else "")
        return die(str(e) + note, 1)
    if args.json:
        emit_json({"valid": True, **report})
        return 0
    named = "" if schedule.name in ("", os.path.basename(path)) else f"{schedule.name} "
    print(f"valid: {path} ({fmt}): {named}{schedule.spec.describe()}, "
          f"{schedule.num_actions} actions")
    return 0
