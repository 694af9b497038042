"""Costs files: per-stage times and memory, or the transformer preset, as JSON.

Per-stage form (times in ``time_unit``, memory in ``memory_unit``)::

    {
      "time_unit": "ms",                               # required in a file: what times count
      "stages": [                                      # one entry per global stage, in order
        {"f": 1.0, "b": 1.1, "w": 0.9, "mem_f": 1.0, "mem_w": 0.5},
        {"f": 1.2, "b": 1.3, "w": 1.0}                  # mem_f defaults to 1, mem_w to mem_f
      ],
      "comm": 0.05,                                    # one transfer between two ranks
      "links": [[0, 0.05], [0.08, 0]],                 # optional: links[i][j], rank i -> j
      "memory_unit": "stage-activations"               # optional label ("bytes", ...)
    }

An entry may name its stage (``"stage": 3``); then entries may come in any order, and a gap is
reported as a missing stage. The pass times are those of one stage (a model chunk), never
divided by v: a rank holding v stages does v of them (``--stage-cost`` on the command line is
the same form with one entry for every stage; ``--cost`` gives per-rank times instead). A file
must say ``time_unit`` so that nobody reads its numbers in another unit.

Transformer form: ``{"transformer": {"model": {...}, "machine": {...}}}`` with the fields of
:class:`~pipeblocks.sim.transformer.TransformerModel` and
:class:`~pipeblocks.sim.transformer.Machine`.

Every problem is one :class:`~pipeblocks.errors.FormatError` (file level) or
:class:`~pipeblocks.errors.SpecError` (does not fit the schedule) naming the field::

    >>> costs = parse_costs({"stages": [{"f": 1, "b": 2, "w": 1}] * 2, "comm": 0.5})
    >>> from pipeblocks.ir import Pass, PipelineSpec
    >>> costs.pass_time(PipelineSpec(2, 4), 1, Pass.BW), costs.comm_time(PipelineSpec(2, 4), 0, 1, 0)
    (3.0, 0.5)
    >>> parse_costs({"stages": [{"f": 1, "b": -2, "w": 1}]})
    Traceback (most recent call last):
    ...
    pipeblocks.errors.FormatError: <input>: field 'stages[0].b' must be a finite number >= 0 (got -2)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.formats._jsonpos import too_deep
from pipeblocks.ir.formats._text import line_col, read_text
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.transformer import Machine, TransformerCosts, TransformerModel

__all__ = ["PerStageCosts", "load_costs", "parse_costs"]

_STAGE_KEYS = ("stage", "f", "b", "w", "mem_f", "mem_w")
_TOP_KEYS = ("stages", "comm", "links", "memory_unit", "time_unit", "transformer")


@dataclass(frozen=True, slots=True)
class PerStageCosts:
    """Times and memory given stage by stage; transfers by ``comm`` or the ``links`` matrix."""

    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    mem_f: tuple[float, ...]
    mem_w: tuple[float, ...]
    comm: float = 0.0
    links: tuple[tuple[float, ...], ...] | None = None
    memory_unit: str = "stage-activations"
    time_unit: str = "unstated"

    def describe(self) -> str:
        """For output headers: how many stages, per stage, in which unit."""
        return f"costs file (per stage, {len(self.f)} stages, times in {self.time_unit})"

    def check(self, spec: PipelineSpec) -> None:
        """Raise :class:`SpecError` naming the field when these costs do not fit ``spec``."""
        n = len(self.f)
        if n != spec.num_stages:
            gap = (f"stage {n} is missing" if n < spec.num_stages
                   else f"stages {spec.num_stages}..{n - 1} are extra")
            raise SpecError(
                f"costs field 'stages' has {n} entries but the schedule has {spec.num_stages} "
                f"stages ({spec.describe()}): {gap}; give one entry per stage"
            )
        if self.links is not None and len(self.links) != spec.num_ranks:
            k = len(self.links)
            raise SpecError(
                f"costs field 'links' is {k}x{k} but the schedule has {spec.num_ranks} ranks; "
                f"give a {spec.num_ranks}x{spec.num_ranks} matrix"
            )

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        self.check(spec)
        if kind is Pass.F:
            return self.f[stage]
        if kind is Pass.B:
            return self.b[stage]
        if kind is Pass.W:
            return self.w[stage]
        return self.b[stage] + self.w[stage]

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        if src_rank == dst_rank:
            return 0.0
        if self.links is None:
            return self.comm
        self.check(spec)
        return self.links[src_rank][dst_rank]

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        self.check(spec)
        return self.mem_f[stage], self.mem_w[stage]


def _fail(path: str, text: str) -> FormatError:
    return FormatError(text, path=path)


def _number(path: str, field: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        x = float(value) if ok else math.nan
    except OverflowError:  # an integer beyond float range (JSON integers have no limit)
        x = math.inf
    if not ok or math.isnan(x) or math.isinf(x) or x < 0 or (positive and x == 0):
        need = "> 0" if positive else ">= 0"
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise _fail(path, f"field '{field}' must be a finite number {need} (got {shown})")
    return x


def _object(path: str, field: str, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """``value`` as a JSON object with only ``keys``; ``field`` "" is the top level."""
    if not isinstance(value, dict):
        what = f"field '{field}'" if field else "the costs file"
        raise _fail(path, f"{what} must be a JSON object (got {type(value).__name__})")
    prefix = f"{field}." if field else ""
    for k in value:
        if k not in keys:
            raise _fail(path, f"unknown field '{prefix}{k}' (known: {', '.join(keys)})")
    return value


def _stages(path: str, raw: Any) -> list[dict[str, float]]:
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "field 'stages' must be a non-empty list with one object per stage")
    entries = []
    for i, item in enumerate(raw):
        obj = _object(path, f"stages[{i}]", item, _STAGE_KEYS)
        row: dict[str, float] = {}
        for k in ("f", "b", "w"):
            if k not in obj:
                raise _fail(path, f"field 'stages[{i}].{k}' is missing; give the time of one "
                            f"microbatch's {k.upper()} on this stage")
            row[k] = _number(path, f"stages[{i}].{k}", obj[k])
        row["mem_f"] = _number(path, f"stages[{i}].mem_f", obj.get("mem_f", 1.0))
        row["mem_w"] = _number(path, f"stages[{i}].mem_w", obj.get("mem_w", row["mem_f"]))
        if row["mem_w"] > row["mem_f"]:
            raise _fail(path, f"field 'stages[{i}].mem_w' must be <= mem_f (got mem_w="
                        f"{row['mem_w']}, mem_f={row['mem_f']})")
        if "stage" in obj:
            s = obj["stage"]
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise _fail(path, f"field 'stages[{i}].stage' must be an integer >= 0 (got {s!r})")
            row["stage"] = s
        entries.append(row)
    named = ["stage" in e for e in entries]
    if any(named):
        if not all(named):
            i = named.index(False)
            raise _fail(path, f"field 'stages[{i}].stage' is missing; name every stage or none")
        by_stage: dict[float, int] = {}
        for i, e in enumerate(entries):
            if e["stage"] in by_stage:
                raise _fail(path, f"field 'stages[{i}].stage': stage {int(e['stage'])} is given "
                            f"twice (also stages[{by_stage[e['stage']]}])")
            by_stage[e["stage"]] = i
        for s in range(len(entries)):
            if s not in by_stage:
                raise _fail(path, f"field 'stages': stage {s} is missing (stages are "
                            f"{', '.join(str(int(k)) for k in sorted(by_stage))}); give one "
                            f"entry for each of 0..{len(entries) - 1}")
        entries.sort(key=lambda e: e["stage"])
    return entries


def _links(path: str, raw: Any) -> tuple[tuple[float, ...], ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(r, list) for r in raw):
        raise _fail(path, "field 'links' must be a square list of lists: links[i][j] is the "
                    "time of one transfer from rank i to rank j")
    n = len(raw)
    for i, row in enumerate(raw):
        if len(row) != n:
            raise _fail(path, f"field 'links[{i}]' has {len(row)} entries; 'links' has {n} rows, "
                        f"so it must be {n}x{n}")
    return tuple(
        tuple(_number(path, f"links[{i}][{j}]", x) for j, x in enumerate(row))
        for i, row in enumerate(raw)
    )


def parse_costs(obj: Any, path: str = "", *, require_unit: bool = False) -> CostModel:
    """A cost model from a decoded costs-file object (see the module docs for the schema);
    ``require_unit``: the per-stage form must state ``time_unit`` (a file must)."""
    obj = _object(path, "", obj, _TOP_KEYS)
    if "transformer" in obj:
        if "stages" in obj:
            raise _fail(path, "give either field 'stages' or field 'transformer', not both")
        tr = _object(path, "transformer", obj["transformer"], ("model", "machine"))
        for part in ("model", "machine"):
            if part not in tr:
                raise _fail(path, f"field 'transformer.{part}' is missing")
        model_keys = tuple(TransformerModel.__dataclass_fields__)
        machine_keys = tuple(Machine.__dataclass_fields__)
        model_raw = _object(path, "transformer.model", tr["model"], model_keys)
        machine_raw = _object(path, "transformer.machine", tr["machine"], machine_keys)
        try:
            return TransformerCosts(TransformerModel(**model_raw), Machine(**machine_raw))
        except (SpecError, TypeError) as e:
            msg = str(e).replace("model field '", "field 'transformer.model.").replace(
                "machine field '", "field 'transformer.machine.")
            raise _fail(path, msg) from None
    if "stages" not in obj:
        raise _fail(path, "field 'stages' is missing (or give field 'transformer')")
    rows = _stages(path, obj["stages"])
    unit = obj.get("memory_unit", "stage-activations")
    if not isinstance(unit, str):
        raise _fail(path, f"field 'memory_unit' must be a string (got {unit!r})")
    if require_unit and "time_unit" not in obj:
        raise _fail(path, "field 'time_unit' is missing; say what the stage times count, e.g. "
                    "\"time_unit\": \"ms\" (times are per stage, never divided by v)")
    time_unit = obj.get("time_unit", "unstated")
    if not isinstance(time_unit, str) or not time_unit.strip():
        raise _fail(path, f"field 'time_unit' must be a non-empty string such as \"ms\" (got "
                    f"{time_unit!r})")
    return PerStageCosts(
        f=tuple(r["f"] for r in rows),
        b=tuple(r["b"] for r in rows),
        w=tuple(r["w"] for r in rows),
        mem_f=tuple(r["mem_f"] for r in rows),
        mem_w=tuple(r["mem_w"] for r in rows),
        comm=_number(path, "comm", obj.get("comm", 0.0)),
        links=_links(path, obj["links"]) if "links" in obj else None,
        memory_unit=unit,
        time_unit=time_unit,
    )


def load_costs(path: str | Path) -> CostModel:
    """Read a costs file (JSON); every problem is one :class:`FormatError` naming the field."""
    name = str(path)
    text = read_text(name)  # UTF-8 (BOM dropped); unreadable or binary: a located FormatError
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"not valid JSON: {e.msg}", path=name, line=e.lineno,
                          column=e.colno) from None
    except RecursionError:
        line, column = line_col(text, too_deep(text))
        raise FormatError("not a costs file: arrays or objects nested too deep", path=name,
                          line=line, column=column) from None
    except ValueError:  # an integer of more than 4300 digits (Python's conversion limit)
        raise FormatError("not a costs file: an integer of more than 4300 digits; write times "
                          "and sizes as ordinary numbers", path=name) from None
    return parse_costs(obj, name, require_unit=True)
