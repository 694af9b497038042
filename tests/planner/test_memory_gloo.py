"""The planner's activation memory against measured peaks on gloo: the small GPT (from the
formulas) and the HF Llama helper (from its profile)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipeblocks.planner.measured import measured_from_costs
from pipeblocks.planner.memory import activation_peaks
from pipeblocks.planner.model import parse_model

ROOT = Path(__file__).resolve().parents[2]
# pipeblocks.models.gpt's defaults as `pipeblocks train` builds them: fp32, no dropout,
# scaled_dot_product_attention (keeps a log-sum-exp, not the scores)
TINY = "layers=8,hidden=64,heads=4,seq=32,vocab=256,act_bytes=4,dropout=0,flash=1"


@pytest.mark.distributed
@pytest.mark.parametrize("schedule,layout", [("1f1b", "2,2,2,2"), ("zb-h1", "3,2,2,1"),
                                             ("v-half", "1,1,1,1,1,1,1,1")])
def test_predicted_peaks_match_measured_within_ten_percent(schedule: str, layout: str) -> None:
    """Every rank's predicted activation peak is within 10% of what autograd saved."""
    argv = [sys.executable, "-m", "pipeblocks", "train", "--schedule", schedule, "--ranks", "4",
            "--microbatches", "8", "--steps", "1", "--layers", "8", "--layout", layout,
            "--microbatch-size", "4", "--memory", "--json"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_activation_bytes"]
    counts = [int(x) for x in layout.split(",")]
    predicted = activation_peaks(parse_model(TINY), schedule, 4, 8, 4,
                                 layers_per_stage=counts, release_at_b=False)
    for rank, (got, want) in enumerate(zip(predicted, measured, strict=True)):
        assert got == pytest.approx(want, rel=0.10), (rank, predicted, measured)


@pytest.mark.distributed
def test_plan_run_trains_the_best_plan_and_compares_memory(tmp_path: Path) -> None:
    """``plan --run``: the best 2-rank plan trains; its predicted peaks are within 10%."""
    argv = [sys.executable, "-m", "pipeblocks", "plan", "--model",
            "layers=4,hidden=32,heads=2,seq=16,vocab=64", "--gpus", "2", "--global-batch", "8",
            "--tp", "1", "--pp", "2", "--microbatch-size", "2", "--run", "--run-steps", "1",
            "--export", str(tmp_path), "--json", "--quiet"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ran = json.loads(out.stdout)["run"]
    assert len(ran["loss"]) == 1 and ran["plan"]["pp"] == 2
    assert len(ran["measured_peak_activation_bytes"]) == 2
    assert max(abs(e) for e in ran["memory_error"]) < 0.10, ran


# ---- the HF Llama helper (examples/hf_llama.py): one decoder layer per stage, hidden 32,
# GQA (4 heads, 2 key/value heads), SwiGLU MLP of width 64, eager attention, fp32.
LLAMA = "hidden=32,heads=4,kv_heads=2,ffn=64,seq=16,vocab=128,act_bytes=4,dropout=0"


def _llama_profile():
    """The Llama helper's 4 stages profiled in this process (`profile_stages`, as `pipeblocks
    profile` runs the small GPT) on the microbatch `pipeblocks train` gives rank 0 first; the
    side inputs (padding mask, positions) bound to each stage."""
    import inspect

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pipeblocks.models.hf import token_loss
    from pipeblocks.runtime.profile import profile_stages
    from pipeblocks.runtime.split import ends_layout

    spec = importlib.util.spec_from_file_location("hf_llama_example", ROOT / "examples/hf_llama.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.set_num_threads(1)
    source = example.build(4, 0)
    parts = source.build()
    ids, labels, side = source.batch(4 * 8, 0)
    ids, labels = ids[:4], labels[:4]
    side = {k: v[:4] for k, v in side.items()}

    class Bound(torch.nn.Module):
        def __init__(self, group):
            super().__init__()
            self.group = torch.nn.ModuleList(group)

        def forward(self, x):
            for part in self.group:
                wants = inspect.signature(part.forward).parameters
                x = part(x, **{k: v for k, v in side.items() if k in wants})
            return x

    per_stage = ends_layout(len(parts) - 2, 4)  # parts: the embedding and head count as one
    bounds, counts, at = [], [], 0
    for s, n in enumerate(per_stage):
        bounds.append(Bound(parts[at:at + n]))
        counts.append(n - (s == 0) - (s == len(per_stage) - 1))  # decoder layers
        at += n

    def loss(logits, target):
        total, count = token_loss(logits, target)
        return total / count

    prof = profile_stages(bounds, ids, labels, loss, reps=1, warmup=0, clock="cpu")
    return prof.costs(), counts


@pytest.mark.distributed
@pytest.mark.slow
def test_llama_helper_peaks_from_its_profile_match_measured_within_ten_percent(
        tmp_path: Path) -> None:
    """The HF Llama helper: its per-layer bytes from a 4-stage profile, placed by the planner's
    memory model for 1f1b, zb-h1 (4 layers) and v-half (8 layers), within 10% of every rank's
    peak that `pipeblocks train --memory` measures on 4 gloo ranks."""
    costs, counts = _llama_profile()
    measured = measured_from_costs(costs, counts, microbatch_size=4)
    for schedule, layers in (("1f1b", 4), ("zb-h1", 4), ("v-half", 8)):
        argv = [sys.executable, "-m", "pipeblocks", "train", "--model",
                "examples/hf_llama.py:build", "--schedule", schedule, "--ranks", "4",
                "--microbatches", "8", "--steps", "1", "--microbatch-size", "4", "--memory",
                "--json"]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])["peak_activation_bytes"]
        model = replace(parse_model(f"layers={layers},{LLAMA}"), measured=measured)
        want = activation_peaks(model, schedule, 4, 8, 4, release_at_b=False)
        for rank, (p, m) in enumerate(zip(want, got, strict=True)):
            assert p == pytest.approx(m, rel=0.10), (schedule, rank, want, got)
