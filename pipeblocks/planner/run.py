"""``pipeblocks plan --run``: train the best plan here and set its measurements beside the
predictions (small models; pipeline parallelism only, as ``pipeblocks train`` runs it).

The run is ``pipeblocks train`` in a child process (real gloo processes on CPU) with the
exported schedule and layout and ``--memory --json``; the comparison is each rank's measured
peak of saved activations against :func:`~pipeblocks.planner.memory.activation_peaks` with
``release_at_b=False`` (pipeblocks' executor keeps a microbatch's graph until its W). The
model is built as ``pipeblocks train`` builds its GPT (fp32), whatever ``act_bytes`` says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.ir.formats import load
from pipeblocks.planner import PlanResult
from pipeblocks.planner.memory import activation_peaks
from pipeblocks.planner.report import export

__all__ = ["run_best"]


def run_best(result: PlanResult, folder: str | Path, *, steps: int = 2,
             timeout: float = 600.0) -> dict[str, Any]:
    """Export the best plan into ``folder``, train it for ``steps`` and compare its memory."""
    p = result.best
    if p is None:
        raise SpecError("no plan fits, so there is nothing to run; see the table")
    if p.dp != 1 or p.tp != 1:
        raise SpecError(f"--run trains with pipeline parallelism only, but the best plan has "
                        f"dp={p.dp}, tp={p.tp}; restrict the space with --tp 1 and --pp "
                        f"{result.cluster.gpus}")
    out = export(result, folder)
    md = result.model
    argv = [sys.executable, "-m", "pipeblocks", "train", "--schedule-file",
            str(out / "schedule.json"), "--ranks", str(p.pp), "--microbatches",
            str(p.num_microbatches), "--layers", str(md.layers), "--layout",
            ",".join(map(str, p.layers_per_stage)), "--dim", str(md.hidden), "--heads",
            str(md.heads), "--seq", str(md.seq), "--vocab", str(md.vocab),
            "--microbatch-size", str(p.microbatch_size), "--steps", str(steps), "--memory",
            "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SpecError(f"the training run failed (exit {done.returncode}): "
                        f"{done.stderr.strip().splitlines()[-1:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    fp32 = replace(md, act_bytes=4, dropout=0, flash=1)  # pipeblocks.models.gpt as trained
    predicted = activation_peaks(fp32, load(out / "schedule.json"), p.pp,
                                 p.num_microbatches, p.microbatch_size,
                                 layers_per_stage=p.layers_per_stage, release_at_b=False)
    measured = report["peak_activation_bytes"]
    return {
        "plan": p.to_dict(),
        "step_ms_median": report["step_ms_median"],
        "loss": report["loss"],
        "measured_peak_activation_bytes": measured,
        "predicted_peak_activation_bytes": list(predicted),
        "memory_error": [pr / me - 1 for pr, me in zip(predicted, measured, strict=True)],
    }
