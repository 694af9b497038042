"""Real gloo processes: every schedule equals the single-process reference; faults never hang."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeblocks.cli.main import main as cli
from pipeblocks.generators import generate, names
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.faults import headline
from pipeblocks.runtime.launch import launch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = str(Path(__file__).with_name("dist_worker.py"))
P, M, MBS = 4, 8, 2


def _run(mode: str, out: Path, *args: str, timeout: float = 60, deadline: float = 240,
         ranks: int = P):
    return launch([sys.executable, WORKER, mode, str(out), *args], ranks, capture=True,
                  env={"PB_TEST_TIMEOUT": str(timeout)}, grace=5, deadline=deadline)


def _reference(num_stages: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain autograd on the unpartitioned model: per-microbatch losses and the batch grads."""
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=num_stages)
    model = TinyGPT(cfg, seed=3)
    tokens, targets = synthetic_batch(cfg, M * MBS, seed=5, step=0)
    loss = lm_loss(model(tokens), targets)
    loss.backward()
    with torch.no_grad():
        per_mb = [lm_loss(model(t), y).item() for t, y in
                  zip(tokens.chunk(M), targets.chunk(M), strict=True)]
    return per_mb, {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def schedules_run(tmp_path_factory) -> dict:
    """One launch of 4 ranks runs every generator and an exported CSV, one step each, then
    trains v-half for twelve steps."""
    tmp = tmp_path_factory.mktemp("rt")
    csv = tmp / "zb-v.csv"
    assert cli(["export", "zb-v", "-p", str(P), "-m", str(M), "--format", "torch-csv",
                "-o", str(csv)]) == 0
    out = tmp / "schedules.pt"
    res = _run("schedules", out, str(csv))
    assert res.ok, "\n".join(res.stderr)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("name", [*names(), "csv"])
def test_schedule_matches_single_process_reference(schedules_run, name: str) -> None:
    """Losses and every gradient equal plain autograd on the whole model (max diff <= 1e-5)."""
    spec = (generate("zb-v", P, M) if name == "csv" else generate(name, P, M)).spec
    ref_losses, ref_grads = _reference(spec.num_stages)
    per_rank = schedules_run[name]
    losses = [ls for ls, _ in per_rank if ls[0] is not None]
    assert len(losses) == 1, "exactly one rank holds the loss"
    assert max(abs(a - b) for a, b in zip(losses[0][0], ref_losses, strict=True)) <= 1e-5
    grads = {k: g for _, gs in per_rank for k, g in gs.items()}
    assert grads.keys() == ref_grads.keys()
    worst = max(float((grads[k] - g).abs().max()) for k, g in ref_grads.items())
    assert worst <= 1e-5, f"{name}: max grad diff {worst}"


def test_every_generator_is_covered(schedules_run) -> None:
    """The run covered all registered generators (the 12 families at least) and the CSV."""
    assert set(schedules_run) == {*names(), "csv", "train"} and len(names()) >= 12


def test_training_lowers_the_loss(schedules_run) -> None:
    """Twelve Adam steps of v-half on 4 ranks lower the small GPT's loss clearly."""
    per_rank = schedules_run["train"]
    losses = [sum(ls) / len(ls) for ls in next(r for r in per_rank if r[0] is not None)]
    assert losses[0] == pytest.approx(math.log(32), abs=0.3)
    assert losses[-1] < losses[0] - 0.4, losses


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_stops_every_other_rank(tmp_path, mode: str) -> None:
    """Rank 2 raises in (or is killed at) 2F3: all ranks exit non-zero, naming rank 2, fast;
    the others say where they stopped and the cause's headline, rank 2 the cause in full."""
    start = time.monotonic()
    res = _run(mode, tmp_path / "x", "2", "2F3", timeout=60, deadline=120)
    took = time.monotonic() - start
    assert all(c != 0 for c in res.codes), res.codes
    assert took < 40, f"took {took:.0f} s"
    expect = "rank 2 failed in 2F3: RuntimeError: injected fault" if mode == "raise" \
        else "rank 2 died (killed by signal 9"
    assert expect in res.fault
    for r in (0, 1, 3):
        assert res.stderr[r].startswith(f"pipeblocks: error: rank {r} stops in ")
        assert res.stderr[r].endswith(f": {headline(res.fault)}\n"), res.stderr[r]
    if mode == "raise":
        assert res.stderr[2] == f"pipeblocks: error: {expect}\n"


def test_a_hanging_rank_times_out_everywhere(tmp_path) -> None:
    """Rank 1 hangs in 1F2: within 3 s + polling every rank stops, naming rank 1 and 1F2."""
    start = time.monotonic()
    res = _run("hang", tmp_path / "x", "1", "1F2", timeout=3, deadline=120)
    assert all(c != 0 for c in res.codes) and time.monotonic() - start < 40
    assert res.fault.startswith("rank 1 is stuck in 1F2: ") and "timed out after 3 s" in res.fault
    assert all("stops in" in err or "timed out" in err for err in res.stderr)


def test_stage_count_mismatch_is_refused_before_communication(tmp_path) -> None:
    """Stages that do not match the schedule are refused in the constructor, on every rank."""
    res = _run("mismatch", tmp_path / "x", ranks=2)
    assert res.codes == (2, 2)
    assert all("got stages" in e and "split the model into 2 stages" in e for e in res.stderr)
