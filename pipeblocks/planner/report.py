"""What the planner hands back: the ranked table, the JSON document and the export folder.

``export(result, folder)`` writes the best plan's schedule (``schedule.csv`` in PyTorch's
format and ``schedule.json``), ``plan.json`` (the plan and its inputs), ``train.sh`` (the
``pipeblocks train`` and ``torchrun`` lines that run its pipeline dimension) and
``torchtitan.toml`` (the parallel degrees, microbatching and the schedule CSV for torchtitan's
job config).

    >>> from pipeblocks.planner.grid import Plan
    >>> p = Plan("v-half", 2, 1, 4, 1, 16, False, "zero1", 61.2e9, True, 12.5, 0.55, 2.1,
    ...          0.04, (6, 6, 6, 6, 6, 6, 6, 6))
    >>> print(table([p]))
    #  schedule  dp  tp  pp  mbs   m  recompute  sharding  GB/GPU  fits  samples/s    MFU
    1    v-half   2   1   4    1  16        off     zero1    61.2   yes       12.5  55.0%
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.ir.formats import dump
from pipeblocks.planner import PlanResult
from pipeblocks.planner.grid import Plan, schedule_of

__all__ = ["table", "document", "export", "COLUMNS"]

COLUMNS = ("schedule", "dp", "tp", "pp", "mbs", "m", "recompute", "sharding", "GB/GPU", "fits",
           "samples/s", "MFU")


def _row(p: Plan) -> list[str]:
    return [p.schedule, str(p.dp), str(p.tp), str(p.pp), str(p.microbatch_size),
            str(p.num_microbatches), "full" if p.recompute else "off", p.sharding,
            f"{p.peak_memory_bytes / 1e9:.1f}", "yes" if p.fits else "NO",
            f"{p.samples_per_s:.3g}", f"{p.mfu:.1%}"]


def table(plans: list[Plan] | tuple[Plan, ...], *, rank: bool = True) -> str:
    """An aligned text table, one plan a row (``#`` numbers the plans that fit)."""
    rows = [["#", *COLUMNS]] if rank else [list(COLUMNS)]
    for i, p in enumerate(plans, 1):
        rows.append(([str(i) if p.fits else "-"] if rank else []) + _row(p))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def document(result: PlanResult, top: int) -> dict[str, Any]:
    """The ``--json`` document: inputs, the ``top`` plans (0: all), each schedule's best."""
    plans = result.plans if top == 0 else result.plans[:top]
    cl = result.cluster
    return {
        "model": asdict(result.model),
        "cluster": {"gpus": cl.gpus, "gpus_per_node": cl.gpus_per_node,
                    "gpu_memory": cl.gpu_memory, "flops": cl.flops},
        "global_batch": result.global_batch,
        "evaluated": len(result.plans),
        "best": result.best.to_dict() if result.best else None,
        "plans": [p.to_dict() for p in plans],
        "best_per_schedule": {k: p.to_dict() for k, p in result.best_per_schedule().items()},
    }


def _commands(result: PlanResult, p: Plan) -> str:
    md = result.model
    layout = ",".join(map(str, p.layers_per_stage))
    common = (f"--schedule-file schedule.json --microbatches {p.num_microbatches} "
              f"--layers {md.layers} --layout {layout} --dim {md.hidden} --heads {md.heads} "
              f"--seq {md.seq} --vocab {md.vocab} --microbatch-size {p.microbatch_size}")
    return "\n".join([
        "#!/bin/sh",
        f"# the pipeline dimension of the plan: {p.pp} ranks of {p.schedule}",
        f"# (pipeblocks train runs pipeline parallelism only; dp={p.dp}, tp={p.tp} are for a",
        "# runtime that has them, e.g. torchtitan: see torchtitan.toml)",
        f"pipeblocks train --ranks {p.pp} {common}",
        f"# or: torchrun --nproc-per-node {p.pp} -m pipeblocks.train {common}",
        "",
    ])


def _torchtitan(result: PlanResult, p: Plan) -> str:
    fsdp = p.sharding != "none"
    return "\n".join([
        "# torchtitan job config settings for this plan (merge into your .toml)",
        "[training]",
        f"global_batch_size = {result.global_batch}",
        f"local_batch_size = {result.global_batch // p.dp}",
        f"seq_len = {result.model.seq}",
        "",
        "[parallelism]",
        f"data_parallel_replicate_degree = {1 if fsdp else p.dp}",
        f"data_parallel_shard_degree = {p.dp if fsdp else 1}",
        f"tensor_parallel_degree = {p.tp}",
        f"enable_sequence_parallel = {'true' if p.tp > 1 else 'false'}",
        f"pipeline_parallel_degree = {p.pp}",
        f"pipeline_parallel_microbatch_size = {p.microbatch_size}",
        'pipeline_parallel_schedule_csv = "schedule.csv"',
        f"# layers per stage from the planner: {','.join(map(str, p.layers_per_stage))}",
        "",
        "[activation_checkpoint]",
        f'mode = "{"full" if p.recompute else "none"}"',
        "",
    ])


def export(result: PlanResult, folder: str | Path) -> Path:
    """Write the best plan's files into ``folder`` (created); returns the folder."""
    p = result.best
    if p is None:
        raise SpecError("no plan fits the GPU memory, so there is nothing to export; use more "
                        "GPUs, GPUs with more memory, or a smaller global batch")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    schedule = schedule_of(result.model, result.cluster, result.global_batch, p)
    dump(schedule, out / "schedule.csv", "torch-csv")
    dump(schedule, out / "schedule.json", "json")
    doc = {"plan": p.to_dict(), "model": asdict(result.model),
           "global_batch": result.global_batch}
    (out / "plan.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "train.sh").write_text(_commands(result, p))
    (out / "torchtitan.toml").write_text(_torchtitan(result, p))
    return out
