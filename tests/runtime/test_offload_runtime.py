"""Offload in the runtime: real gloo processes, gradients equal the whole model's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pipeblocks.generators import generate, names
from pipeblocks.ir.offload import with_offload
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.launch import launch
from pipeblocks.runtime.offload import OffloadStage

WORKER = str(Path(__file__).with_name("offload_worker.py"))
P, M, MBS = 4, 8, 2


def _reference(num_stages: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain autograd on the unpartitioned model: per-microbatch losses and the batch grads."""
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=num_stages)
    model = TinyGPT(cfg, seed=3)
    tokens, targets = synthetic_batch(cfg, M * MBS, seed=5, step=0)
    lm_loss(model(tokens), targets).backward()
    with torch.no_grad():
        per_mb = [lm_loss(model(t), y).item() for t, y in
                  zip(tokens.chunk(M), targets.chunk(M), strict=True)]
    return per_mb, {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def offload_run(tmp_path_factory) -> dict:
    """One launch of 4 ranks: every generator with every eligible pair offloaded."""
    out = tmp_path_factory.mktemp("off") / "offload.pt"
    res = launch([sys.executable, WORKER, str(out)], P, capture=True,
                 env={"PB_TEST_TIMEOUT": "120"}, grace=5, deadline=600)
    assert res.ok, "\n".join(res.stderr)
    return torch.load(out, weights_only=False)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", names())
def test_offload_matches_single_process_reference(offload_run, name: str) -> None:
    """Losses and every gradient equal plain autograd on the whole model (max diff <= 1e-5),
    with the B/W split where the generator splits (W reads tensors F saved, reloaded)."""
    ref_losses, ref_grads = _reference(generate(name, P, M).spec.num_stages)
    per_rank = offload_run[name]
    losses = [ls for ls, _ in per_rank if ls[0] is not None]
    assert len(losses) == 1
    assert max(abs(a - b) for a, b in zip(losses[0][0], ref_losses, strict=True)) <= 1e-5
    grads = {k: g for _, gs in per_rank for k, g in gs.items()}
    assert grads.keys() == ref_grads.keys()
    worst = max(float((grads[k] - g).abs().max()) for k, g in ref_grads.items())
    assert worst <= 1e-5, f"{name}: max grad diff {worst}"


def test_offloaded_tensors_live_in_the_host_pool_between_f_and_b() -> None:
    """After the offload op the pool holds host copies and the device holds only the input;
    a backward before the reload is refused; after it, B and W give plain autograd's
    gradients."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    st = OffloadStage(net, stage=1, num_stages=3)
    x = torch.randn(4, 8)
    out = st.forward(0, x)
    saved = st.device_bytes(0)
    moved = st.offload(0)
    assert 0 < moved < saved and st.device_bytes(0) == saved - moved == x.nbytes
    assert all(not t.is_cuda for t in st._pools[0].tensors)
    with pytest.raises(Exception, match="host memory"):
        st.backward_input(0, torch.ones_like(out))
    st2 = OffloadStage(net, stage=1, num_stages=3)
    out = st2.forward(1, x)
    st2.offload(1)
    assert st2.reload(1) == moved and st2.host_bytes(1) == 0
    gx = st2.backward_input(1, torch.ones_like(out))
    net.zero_grad()
    st2.backward_weight(1)
    got = [p.grad.clone() for p in net.parameters()]
    ref = x.clone().requires_grad_()
    net.zero_grad()
    net(ref).sum().backward()
    assert torch.allclose(gx, ref.grad)
    assert all(torch.allclose(a, p.grad) for a, p in zip(got, net.parameters(), strict=True))


def test_executor_runs_offload_ops_and_holds_less() -> None:
    """One process, gpipe: the executor's measured peak with offload is below the plain one's
    and the gradients are the same."""
    from pipeblocks.runtime.split import ends_layout, split

    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=2)
    tokens, targets = synthetic_batch(cfg, 4 * MBS, seed=5)
    runs = []
    for offload in (False, True):
        s = generate("gpipe", 1, 4)
        s = with_offload(s) if offload else s
        mods = dict(enumerate(split(TinyGPT(cfg, seed=3), 1, ends_layout(2, 1))))
        res = Executor(s, mods, lm_loss, None, rank=0, measure_memory=True).step(tokens, targets)
        runs.append((res.peak_activation_bytes, [p.grad for p in mods[0].parameters()]))
    (plain, g0), (off, g1) = runs
    assert off < 0.75 * plain  # two microbatches on the device at most, of four
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))


def test_emulated_link_overlaps_and_the_backward_waits_for_its_reload() -> None:
    """--emulate-link: the copies sleep on side threads (offload and reload return at once)
    and the B waits until the offload and then the reload have taken bytes / bandwidth each."""
    import time

    from pipeblocks.runtime.offload import OffloadEmulated, set_link

    st = OffloadEmulated(stage=1, num_stages=3, ms=0.0, out_shape=(1000,))  # 4000 bytes
    set_link({1: st}, 4000 / 0.15 / 1e9)  # 0.15 s per copy
    st.forward(0, torch.zeros(1000))
    t0 = time.perf_counter()
    st.offload(0)
    st.reload(0)
    posted = time.perf_counter() - t0
    st.backward_input(0, torch.zeros(1000))
    waited = time.perf_counter() - t0
    assert posted < 0.1 and waited >= 0.3


def test_offload_with_tensor_parallel_or_fsdp_is_refused_before_any_process() -> None:
    """Offload is built for plain and DDP-style stages: --tp and --dp-mode fsdp are named."""
    import argparse

    from pipeblocks.cli.train import add_train_args, build_plan
    from pipeblocks.errors import SpecError

    def plan(*argv: str):
        p = argparse.ArgumentParser()
        add_train_args(p, ranks_required=True)
        return build_plan(p.parse_args(["--schedule", "1f1b", "--microbatches", "4",
                                        "--layers", "4", "--dim", "32", "--heads", "4",
                                        "--offload", "all", *argv]))

    with pytest.raises(SpecError, match="--offload with --tp 2 is not built"):
        plan("--ranks", "4", "--tp", "2")
    with pytest.raises(SpecError, match="--offload with --dp-mode fsdp is not built"):
        plan("--ranks", "4", "--dp", "2", "--dp-mode", "fsdp")
    assert plan("--ranks", "4", "--dp", "2").schedule.offload is not None  # DDP-style runs
