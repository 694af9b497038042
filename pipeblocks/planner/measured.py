"""Model numbers from a profile: measured per-layer F, B, W times and activation bytes.

``pipeblocks plan --model FILE`` (and ``pipeblocks.plan("FILE.json", ...)``) reads a JSON file
that names the model and points at the per-stage costs file ``pipeblocks profile -o`` writes
(docs/simulator.md; times in ``time_unit``, memory in bytes)::

    {
      "model": "layers=8,hidden=64,heads=4,seq=32,vocab=256,act_bytes=4,dropout=0,flash=1",
      "microbatch_size": 4,                  # sequences per microbatch the profile ran
      "layers_per_stage": [1, 1, 1, 1, 1, 1, 1, 1],   # the profiled split (default: even)
      "costs": "costs.json"                  # a path (relative to this file) or the object
    }

The costs file has one entry per stage; stage s holds ``n_s`` transformer layers, the first
stage also the embedding and the last the output layer (as ``pipeblocks train`` splits the
small GPT). The profiled model may be shallower than the planned one (``layers`` in
``model``): only the per-layer costs carry over; ``layers_per_stage`` defaults to the planned
layers spread evenly over the stages. For each of F, B, W, mem_f and mem_w the **layer** value is the least-squares fit
``sum(n q) / sum(n^2)`` over the middle stages, the **embedding** is what the first stage has
beyond its layers and the **head** what the last stage has beyond its layers (never below 0).
So the profile needs three stages or more (``pipeblocks profile --ranks 2`` gives four with its
default ``--stages-per-rank 2``).

These measurements replace the FLOPs model for the layers, the embedding and the head. At
another microbatch size b or tensor-parallel degree t the planner scales them by the FLOPs
model's ratio ``(b / b0) / t * eff(b0, 1) / eff(b, t)`` (the efficiency curve of
:mod:`~pipeblocks.planner.cluster`), so at the profiled point (b0, t = 1) the times are the
measured ones; activation bytes scale by ``(b / b0) / t``. Parameters and the MFU's FLOPs still
come from the model numbers.

    >>> costs = {"time_unit": "ms", "memory_unit": "bytes", "stages": [
    ...     {"f": 1.5, "b": 2.5, "w": 1.0, "mem_f": 110, "mem_w": 50},
    ...     {"f": 1.0, "b": 2.0, "w": 1.0, "mem_f": 100, "mem_w": 50},
    ...     {"f": 3.0, "b": 5.0, "w": 3.0, "mem_f": 400, "mem_w": 150}]}
    >>> m = measured_from_costs(costs, (1, 1, 1), microbatch_size=2)
    >>> [round(x * 1e3, 3) for x in m.layer[:3]], m.layer[3:]    # ms; bytes
    ([1.0, 2.0, 1.0], (100.0, 50.0))
    >>> [round(x * 1e3, 3) for x in m.head[:3]], m.head[3:], m.embedding[3:]
    ([2.0, 3.0, 2.0], (300.0, 100.0), (10.0, 0.0))
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.planner.model import ModelSpec, parse_model
from pipeblocks.sim.costs_file import PerStageCosts, parse_costs

__all__ = ["Measured", "measured_from_costs", "load_model_file", "read_model", "TIME_UNITS"]

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_KEYS = ("model", "microbatch_size", "layers_per_stage", "costs")

Quantities = tuple[float, float, float, float, float]
"""(f, b, w) in seconds and (mem_f, mem_w) in bytes, for one microbatch of the profile."""


@dataclass(frozen=True, slots=True)
class Measured:
    """Measured costs of one layer, the embedding and the output layer at ``microbatch_size``
    sequences, tensor-parallel degree 1: each ``(f, b, w, mem_f, mem_w)``, seconds and bytes."""

    microbatch_size: int
    layer: Quantities
    embedding: Quantities
    head: Quantities


def _fit(values: Sequence[float], counts: Sequence[int]) -> tuple[float, float, float]:
    """(per layer, embedding extra, head extra) of one quantity from per-stage values."""
    middle = [(n, v) for n, v in zip(counts[1:-1], values[1:-1], strict=True) if n > 0]
    per_layer = sum(n * v for n, v in middle) / sum(n * n for n, _ in middle)
    first = max(0.0, values[0] - counts[0] * per_layer)
    last = max(0.0, values[-1] - counts[-1] * per_layer)
    return per_layer, first, last


def measured_from_costs(costs: Any, layers_per_stage: Sequence[int], *,
                        microbatch_size: int, where: str = "") -> Measured:
    """A :class:`Measured` from a per-stage costs-file object and the profiled split."""
    model = parse_costs(costs, where, require_unit=True)
    if not isinstance(model, PerStageCosts):
        raise FormatError("field 'costs' must be the per-stage form (field 'stages'), as "
                          "`pipeblocks profile -o` writes it, not the transformer preset",
                          path=where)
    scale = TIME_UNITS.get(model.time_unit)
    if scale is None:
        raise FormatError(f"field 'costs.time_unit' must be one of {', '.join(TIME_UNITS)} "
                          f"(got {model.time_unit!r})", path=where)
    if model.memory_unit != "bytes":
        raise FormatError(f"field 'costs.memory_unit' must be \"bytes\" (got "
                          f"{model.memory_unit!r}): the planner needs activation bytes, as "
                          f"`pipeblocks profile` measures them", path=where)
    counts = tuple(layers_per_stage)
    if len(counts) != len(model.f):
        raise SpecError(f"layers_per_stage has {len(counts)} entries but the costs have "
                        f"{len(model.f)} stages; give one count per stage")
    if len(counts) < 3 or not any(counts[1:-1]):
        raise SpecError(f"a profile needs 3 or more stages with layers between the first and "
                        f"the last to tell a layer from the embedding and the head (got "
                        f"layers_per_stage {list(counts)}); profile with more stages, e.g. "
                        f"`pipeblocks profile --ranks 2` (4 stages)")
    cols = [tuple(x * scale for x in model.f), tuple(x * scale for x in model.b),
            tuple(x * scale for x in model.w), model.mem_f, model.mem_w]
    fits = [_fit(c, counts) for c in cols]
    layer, emb, head = (tuple(float(f[i]) for f in fits) for i in range(3))
    return Measured(microbatch_size, layer, emb, head)  # type: ignore[arg-type]


def _positive_int(where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FormatError(f"field '{name}' must be an integer >= 1 (got {value!r})", path=where)
    return value


def read_model(text: str) -> ModelSpec:
    """``--model``: the ``layers=..,hidden=..`` text, or the path of a model file."""
    if "=" not in text and (text.endswith(".json") or os.path.isfile(text)):
        return load_model_file(text)
    return parse_model(text)


def load_model_file(path: str | Path) -> ModelSpec:
    """The :class:`~pipeblocks.planner.model.ModelSpec` a model file describes, with its
    measurements (see the module docs for the format)."""
    where = str(path)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise FormatError(f"cannot read the model file: {e.strerror}", path=where) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"the model file is not JSON: {e}", path=where) from None
    if not isinstance(doc, dict):
        raise FormatError("a model file must be a JSON object", path=where)
    unknown = [k for k in doc if k not in _KEYS]
    missing = [k for k in ("model", "microbatch_size", "costs") if k not in doc]
    if unknown or missing:
        what = f"unknown field '{unknown[0]}'" if unknown else f"field '{missing[0]}' is missing"
        raise FormatError(f"{what} (a model file has {', '.join(_KEYS)})", path=where)
    raw = doc["model"]
    if isinstance(raw, dict):
        raw = ",".join(f"{k}={v}" for k, v in raw.items())
    if not isinstance(raw, str):
        raise FormatError("field 'model' must be the --model text (layers=..,hidden=..) or an "
                          "object of those fields", path=where)
    spec = parse_model(raw)
    mbs = _positive_int(where, "microbatch_size", doc["microbatch_size"])
    costs = doc["costs"]
    costs_where = where
    if isinstance(costs, str):
        costs_path = Path(path).parent / costs
        costs_where = str(costs_path)
        try:
            costs = json.loads(costs_path.read_text(encoding="utf-8-sig"))
        except OSError as e:
            raise FormatError(f"cannot read the costs file named by field 'costs': "
                              f"{e.strerror}", path=costs_where) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"the costs file is not JSON: {e}", path=costs_where) from None
    stages = len(costs.get("stages", ())) if isinstance(costs, dict) else 0
    counts = doc.get("layers_per_stage")
    if counts is None:
        if not stages or spec.layers % stages:
            raise FormatError(f"field 'layers_per_stage' is missing and {spec.layers} layers "
                              f"do not split evenly over {stages} stages; give the split the "
                              f"profile ran", path=where)
        counts = [spec.layers // stages] * stages
    ok = isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
    if not ok:
        raise FormatError(f"field 'layers_per_stage' must list the transformer layers of each "
                          f"profiled stage, integers >= 0 (got {counts!r})", path=where)
    measured = measured_from_costs(costs, counts, microbatch_size=mbs, where=costs_where)
    return replace(spec, measured=measured)
