"""Schedules as JSON: the spec, the placement and one list of action strings per rank.

A document (its JSON Schema is :data:`SCHEMA`; docs/formats.md shows it)::

    {
      "format": "pipeblocks-schedule",
      "version": 1,
      "name": "1f1b",
      "spec": {"num_ranks": 2, "num_microbatches": 2, "stages_per_rank": 1, "placement": "loop"},
      "programs": [
        ["0F0", "0F1", "0BW0", "0BW1"],
        ["1F0", "1BW0", "1F1", "1BW1"]
      ]
    }

Actions use our letters (F, B = input gradient, W, BW = fused backward), not PyTorch's. Beyond
the schema, the programs must fit the spec: one list per rank, stages in 0..S-1, microbatches
in 0..m-1, and each action in the program of the rank its placement gives. Anything else is a
:class:`~pipeblocks.errors.FormatError` naming the line and column of the offending value.

    >>> from pipeblocks.generators import generate
    >>> s = generate("1f1b", num_ranks=2, num_microbatches=2)
    >>> print(dumps(s))  # doctest: +NORMALIZE_WHITESPACE
    {
      "format": "pipeblocks-schedule",
      "version": 1,
      "name": "1f1b",
      "spec": {"num_ranks": 2, "num_microbatches": 2, "stages_per_rank": 1, "placement": "loop"},
      "programs": [
        ["0F0", "0F1", "0BW0", "0BW1"],
        ["1F0", "1BW0", "1F1", "1BW1"]
      ]
    }
    >>> loads(dumps(s)) == s
    True
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.formats._jsonpos import Path, locate, too_deep
from pipeblocks.ir.formats._text import MAX_DIGITS, line_col
from pipeblocks.ir.moves import Offload, OffloadLink
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["FORMAT", "VERSION", "SCHEMA", "dumps", "loads"]

FORMAT = "pipeblocks-schedule"
VERSION = 1
_POSITIVE = {"type": "integer", "minimum": 1}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pipeblocks schedule",
    "type": "object",
    "required": ["format", "version", "spec", "programs"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "name": {"type": "string", "description": "where the schedule came from"},
        "spec": {
            "type": "object",
            "required": ["num_ranks", "num_microbatches", "stages_per_rank", "placement"],
            "additionalProperties": False,
            "properties": {
                "num_ranks": _POSITIVE,
                "num_microbatches": _POSITIVE,
                "stages_per_rank": _POSITIVE,
                "placement": {"enum": [p.value for p in Placement]},
            },
        },
        "programs": {
            "type": "array",
            "description": "one program per rank (num_ranks of them), actions in program order",
            "items": {
                "type": "array",
                "items": {"type": "string", "pattern": "^([0-9]+)(BW|F|B|W)([0-9]+)$"},
            },
        },
        "recompute": {
            "type": "array",
            "description": "stages that keep only their input between F and B (docs/memory.md)",
            "items": {"type": "integer", "minimum": 0},
        },
        "offload": {
            "type": "object",
            "description": "activations moved to host memory after F and back before B "
                           "(docs/memory.md, Offload): pairs [stage, microbatch] and the link",
            "properties": {
                "pairs": {"type": "array", "items": {"type": "array", "items": {
                    "type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}},
                "link": {"type": "object", "properties": {
                    "bandwidth": {"type": ["number", "null"]}, "latency": {"type": "number"},
                    "shared": {"type": "boolean"}}},
            },
        },
    },
}
_ACTION = re.compile(SCHEMA["properties"]["programs"]["items"]["items"]["pattern"])
_KNOWN = tuple(SCHEMA["properties"])
_SPEC = SCHEMA["properties"]["spec"]

def dumps(schedule: Schedule) -> str:
    """The document, one line per rank's program (ends with a newline)."""
    spec = schedule.spec
    head = {
        "format": FORMAT,
        "version": VERSION,
        "name": schedule.name,
        "spec": {
            "num_ranks": spec.num_ranks,
            "num_microbatches": spec.num_microbatches,
            "stages_per_rank": spec.stages_per_rank,
            "placement": spec.placement.value,
        },
    }
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    programs = ",\n".join(
        "    [" + ", ".join(f'"{a}"' for a in prog) + "]" for prog in schedule.programs
    )
    extra = []  # written only when set: other documents stay as they were
    if schedule.recompute:
        extra.append(f'  "recompute": {json.dumps(sorted(schedule.recompute))}')
    if schedule.offload is not None:
        extra.append(f'  "offload": {json.dumps(offload_doc(schedule.offload))}')
    lines += ['  "programs": [', programs, "  ]" + ("," if extra else "")]
    if extra:
        lines.append(",\n".join(extra))
    lines += ["}", ""]
    return "\n".join(lines)


class _Invalid(Exception):
    """A schema failure at ``path``; :func:`loads` turns it into a located FormatError."""

    def __init__(self, path: Path, message: str, *, last: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.last = last  # point at the last of several equal keys (a duplicate)


class _Object(dict[str, Any]):
    """A JSON object that remembers a key it saw twice (json keeps only the last)."""

    duplicate: str | None = None


class _Odd:
    """A value json accepts but a schedule never holds: NaN, Infinity, a 19+ digit integer."""

    def __init__(self, text: str) -> None:
        self.text = text


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    for k, v in pairs:
        if k in obj and obj.duplicate is None:
            obj.duplicate = k
        obj[k] = v
    return obj


def _int(text: str) -> int | _Odd:
    return int(text) if len(text.lstrip("-")) <= MAX_DIGITS else _Odd(text)


def loads(text: str, *, name: str | None = None, path: str = "") -> Schedule:
    """Read a document; ``name`` overrides the stored name, ``path`` names the input in errors."""
    if not isinstance(text, str):
        raise FormatError(f"expected JSON text, got {type(text).__name__}", path=path)
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    if not text.strip():
        raise FormatError("empty input: expected a pipeblocks-schedule JSON object",
                          path=path, line=1, column=1)
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_int=_int, parse_constant=_Odd)
    except json.JSONDecodeError as e:
        raise FormatError(f"not valid JSON: {e.msg}", path=path, line=e.lineno,
                          column=e.colno) from None
    except RecursionError:
        line, col = line_col(text, too_deep(text))
        raise FormatError("not a schedule: arrays or objects nested too deep",
                          path=path, line=line, column=col) from None
    try:
        schedule = _schedule(doc)
    except _Invalid as e:
        line, col = line_col(text, locate(text, e.path, last=e.last))
        raise FormatError(str(e), path=path, line=line, column=col) from None
    return schedule if name is None else schedule.renamed(name)


def _where(path: Path) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "the document"


def _kind(value: Any) -> str:
    if isinstance(value, _Odd):
        why = "out of range" if value.text.lstrip("-").isdigit() else "not a finite number"
        return f"{value.text[:24]} ({why})"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40])}"
    if isinstance(value, int | float):
        return f"the number {json.dumps(value)[:24]}"
    return "an object" if isinstance(value, dict) else "an array"


def _object(value: Any, path: Path, schema: dict[str, Any]) -> _Object:
    if not isinstance(value, dict):
        raise _Invalid(path, f"{_where(path)} must be an object, got {_kind(value)}")
    assert isinstance(value, _Object)
    if value.duplicate is not None:
        raise _Invalid(path + (value.duplicate,),
                       f"key {value.duplicate!r} appears twice in {_where(path)}; keep one",
                       last=True)
    known = tuple(schema["properties"])
    for k in value:
        if k not in known:
            raise _Invalid(path + (k,),
                           f"unknown key {k!r} in {_where(path)}; known: {', '.join(known)}")
    return value


def _require(value: _Object, path: Path, schema: dict[str, Any]) -> None:
    for k in schema["required"]:
        if k not in value:
            raise _Invalid(path, f"{_where(path)} lacks the key {k!r}")


def _positive(value: Any, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(path, f"{_where(path)} must be an integer >= 1, got {_kind(value)}")
    return value


def _schedule(doc: Any) -> Schedule:
    doc = _object(doc, (), SCHEMA)
    if "format" not in doc or doc["format"] != FORMAT:
        got = f"format is {_kind(doc['format'])}" if "format" in doc else "it has no 'format' key"
        raise _Invalid(("format",) if "format" in doc else (),
                       f"not a pipeblocks schedule: {got}, expected {FORMAT!r}")
    version = doc.get("version")
    exact = isinstance(version, int) and not isinstance(version, bool)
    if exact and version > VERSION:
        raise _Invalid(("version",), f"format version {version} is newer than this pipeblocks "
                                     f"reads ({VERSION}); upgrade pipeblocks")
    if "version" in doc and (not exact or version != VERSION):
        raise _Invalid(("version",), f"version must be {VERSION}, got {_kind(version)}")
    _require(doc, (), SCHEMA)
    name = doc.get("name", "")
    if not isinstance(name, str):
        raise _Invalid(("name",), f"name must be a string, got {_kind(name)}")
    raw = _object(doc["spec"], ("spec",), _SPEC)
    _require(raw, ("spec",), _SPEC)
    sizes = [_positive(raw[k], ("spec", k))
             for k in ("num_ranks", "num_microbatches", "stages_per_rank")]
    placements = _SPEC["properties"]["placement"]["enum"]
    if raw["placement"] not in placements or not isinstance(raw["placement"], str):
        raise _Invalid(("spec", "placement"), f"spec.placement must be one of "
                       f"{', '.join(placements)}, got {_kind(raw['placement'])}")
    try:
        spec = PipelineSpec(sizes[0], sizes[1], sizes[2], Placement(raw["placement"]))
    except SpecError as e:
        raise _Invalid(("spec",), f"spec is not possible: {e}") from None
    programs = _programs(doc["programs"], spec)
    # Each (stage, mb) needs its own F: a spec far larger than its programs (with slack for
    # files still being written) is corrupt, and trusting it would have the simulator and the
    # pictures work on a pipeline of that size.
    count = sum(map(len, programs))
    if spec.num_stages * spec.num_microbatches > 4 * count + 1024:
        raise _Invalid(("spec",), f"the spec ({spec.describe()}) needs "
                                  f"{spec.num_stages * spec.num_microbatches} forward passes but "
                                  f"programs hold only {count} actions; is a number corrupt?")
    return Schedule(spec, programs, name, _recompute(doc.get("recompute", []), spec),
                    _offload(doc.get("offload")))


def offload_doc(off: Offload) -> dict[str, Any]:
    """The JSON value of ``Schedule.offload``."""
    link = off.link
    return {"pairs": [list(p) for p in sorted(off.pairs)],
            "link": {"bandwidth": None if math.isinf(link.bandwidth) else link.bandwidth,
                     "latency": link.latency, "shared": link.shared}}


def _offload(value: Any) -> Offload | None:
    """``Schedule.offload`` from its JSON value (the validator checks the pairs' ranges)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("pairs"), list):
        raise _Invalid(("offload",), f"offload must be an object with pairs, got {_kind(value)}")
    pairs = []
    for i, p in enumerate(value["pairs"]):
        if not (isinstance(p, list) and len(p) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p)):
            raise _Invalid(("offload", "pairs", i), f"offload.pairs[{i}] must be [stage, "
                                                    f"microbatch], got {_kind(p)}")
        pairs.append((p[0], p[1]))
    raw = value.get("link", {})
    if isinstance(raw, dict) and raw.get("bandwidth", 0) is None:  # null: an instant link
        raw = {**raw, "bandwidth": math.inf}
    try:
        link = OffloadLink(**raw) if isinstance(raw, dict) else None
    except (TypeError, SpecError) as e:
        raise _Invalid(("offload", "link"), f"offload.link is not possible: {e}") from None
    if link is None:
        raise _Invalid(("offload", "link"), f"offload.link must be an object, got {_kind(raw)}")
    return Offload(frozenset(pairs), link)


def _recompute(value: Any, spec: PipelineSpec) -> frozenset[int]:
    if not isinstance(value, list):
        raise _Invalid(("recompute",), f"recompute must be an array of stages, got "
                                       f"{_kind(value)}")
    for i, s in enumerate(value):
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < spec.num_stages:
            raise _Invalid(("recompute", i), f"recompute[{i}] must be a stage in "
                                             f"0..{spec.num_stages - 1}, got {_kind(s)}")
    return frozenset(value)


def _programs(value: Any, spec: PipelineSpec) -> tuple[tuple[Action, ...], ...]:
    path: Path = ("programs",)
    if not isinstance(value, list):
        raise _Invalid(path, f"programs must be an array of arrays, got {_kind(value)}")
    if len(value) != spec.num_ranks:
        raise _Invalid(path, f"programs holds {len(value)} programs but spec.num_ranks is "
                             f"{spec.num_ranks}; give one program per rank")
    home: dict[int, int] = {}
    out = []
    for rank, prog in enumerate(value):
        if not isinstance(prog, list):
            raise _Invalid(path + (rank,), f"programs[{rank}] must be an array of action "
                                           f"strings, got {_kind(prog)}")
        fast = _fast_program(prog, rank, spec)
        if fast is not None:
            out.append(fast)
            continue
        actions = []
        for i, text in enumerate(prog):
            at = path + (rank, i)
            match = _ACTION.fullmatch(text) if isinstance(text, str) else None
            if match is None:
                raise _Invalid(at, f"programs[{rank}][{i}] is {_kind(text)}, not an action "
                                   f"<stage><F|B|W|BW><microbatch> such as \"0F3\" or \"2BW1\"")
            if len(match.group(1)) > MAX_DIGITS or len(match.group(3)) > MAX_DIGITS:
                raise _Invalid(at, f"programs[{rank}][{i}]: a number is too large")
            a = Action(int(match.group(1)), _KINDS[match.group(2)], int(match.group(3)))
            actions.append(a)
            _fits(a, rank, spec, home, at)
        out.append(tuple(actions))
    return tuple(out)


# A program of well-formed actions that fit the spec is read in bulk: joined by commas, checked
# by one regex and split by findall. Anything else goes action by action, to name the culprit.
_N = f"[0-9]{{1,{MAX_DIGITS}}}"
_ROW = re.compile(rf"{_N}(?:BW|F|B|W){_N}(?:,{_N}(?:BW|F|B|W){_N})*")
_TRIPLE = re.compile(r"([0-9]+)(BW|F|B|W)([0-9]+)")
_KINDS = {k.value: k for k in Pass}


def _fast_program(prog: list[Any], rank: int, spec: PipelineSpec) -> tuple[Action, ...] | None:
    """The program's actions if every string is an action that fits the spec, else None."""
    if not prog:
        return ()
    if not all(type(x) is str for x in prog):
        return None
    joined = ",".join(prog)
    if not _ROW.fullmatch(joined):
        return None
    triples = _TRIPLE.findall(joined)
    if len(triples) != len(prog):  # an element held a comma: not one action each
        return None
    actions = tuple(Action(int(s), _KINDS[k], int(j)) for s, k, j in triples)
    stages = {a.stage for a in actions}
    if max(stages) >= spec.num_stages or max(a.mb for a in actions) >= spec.num_microbatches:
        return None
    if any(spec.rank_of(s) != rank for s in stages):
        return None
    return actions


def _fits(a: Action, rank: int, spec: PipelineSpec, home: dict[int, int], at: Path) -> None:
    """The action agrees with the spec: its indices exist and its rank holds its stage."""
    if a.stage >= spec.num_stages or a.mb >= spec.num_microbatches:
        raise _Invalid(at, f"{a} contradicts the spec ({spec.describe()}): stages are "
                           f"0..{spec.num_stages - 1}, microbatches 0..{spec.num_microbatches - 1}")
    h = home.get(a.stage)
    if h is None:
        h = home[a.stage] = spec.rank_of(a.stage)
    if h != rank:
        raise _Invalid(at, f"{a} is in rank {rank}'s program but the spec's placement "
                           f"'{spec.placement.value}' ({spec.describe()}) puts stage {a.stage} "
                           f"on rank {h}; fix spec.placement or move the action")
