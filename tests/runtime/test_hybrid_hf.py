"""The HF Llama helper under data parallel (4 real gloo ranks) equals the whole model.

Two things the small GPT cannot show: the replicas' slices hold different token counts (the
helper's batches are padded), so the token mean must be over the global batch, not averaged
per replica; and the layers take side inputs (``position_ids``, the padding mask), which a stage
FSDP2 wraps whole must still hand to each layer; and a tied weight (GPT-2) under FSDP2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize(("model", "mode"), [("hf_llama", "ddp"), ("hf_llama", "fsdp"),
                                           ("hf_gpt2", "fsdp")])
def test_hf_dp2_pp2_matches_the_whole_model_on_the_global_batch(model: str, mode: str) -> None:
    """GPT-2 ties its head to the embedding: under FSDP2 the two ranks' copies are separate
    parameters, checked by the reference's names."""
    pytest.importorskip("transformers")
    argv = ["--model", f"examples/{model}.py:build", "--schedule", "1f1b", "--ranks", "4",
            "--dp", "2", "--dp-mode", mode, "--microbatches", "4", "--microbatch-size", "2",
            "--steps", "2", "--check-grads", "--json", "--timeout", "120"]
    res = subprocess.run([sys.executable, "-m", "pipeblocks", "train", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert (r["dp"], r["pp"]) == (2, 2)
    assert r["grad_max_abs_diff"] <= 1e-5 and r["loss_abs_diff"] <= 1e-5
