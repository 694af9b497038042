"""The executor in one process (p = 1, every generator): the math, scaling, tags, refusals."""

from __future__ import annotations

import pytest
import torch

import pipeblocks as pb
from pipeblocks.errors import SpecError
from pipeblocks.ir.lowering import Comm, lower
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.emulate import EmulatedStage
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.p2p import handshake_tag, tag_of
from pipeblocks.runtime.split import ends_layout, split

pytestmark = pytest.mark.torch

M, MBS = 4, 2


def _setup(schedule, seed: int = 3):
    S = schedule.spec.num_stages
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=2 * S)
    model = TinyGPT(cfg, seed=seed)
    stages = dict(enumerate(split(model, S, ends_layout(cfg.layers, S))))
    tokens, targets = synthetic_batch(cfg, M * MBS, seed=1)
    ref = TinyGPT(cfg, seed=seed)
    loss = lm_loss(ref(tokens), targets)
    loss.backward()
    return model, stages, tokens, targets, ref, loss.item()


@pytest.mark.parametrize("name", pb.names())
def test_every_generator_in_one_process_matches_plain_autograd(name: str) -> None:
    """p=1 (so V placements hand over locally at the turn): same loss and gradients."""
    schedule = pb.generate(name, 1, M)
    model, stages, tokens, targets, ref, ref_loss = _setup(schedule)
    res = Executor(schedule, stages, lm_loss, None, rank=0).step(tokens, targets)
    assert res.loss == pytest.approx(ref_loss, abs=1e-6)
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=n)


def test_gradients_are_scaled_once_per_step() -> None:
    """SGD with lr 1 moves every weight by exactly the batch-mean gradient, step after step."""
    schedule = pb.generate("zb-h1", 1, M)
    model, stages, tokens, targets, ref, _ = _setup(schedule)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1.0)
    ex = Executor(schedule, stages, lm_loss, opt, rank=0)
    ref_opt.step()  # _setup left the reference's first gradients in place
    ex.step(tokens, targets)
    for _ in range(2):
        ref_opt.zero_grad()
        lm_loss(ref(tokens), targets).backward()
        ref_opt.step()
        ex.step(tokens, targets)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", pb.names())
def test_tags_are_unique_within_a_step(name: str) -> None:
    """Every transfer of a step has its own tag, below every shape-handshake tag."""
    schedule = pb.generate(name, 4, 8)
    S, m = schedule.spec.num_stages, schedule.spec.num_microbatches
    tags = [tag_of(op.transfer, S) for prog in lower(schedule).programs for op in prog
            if isinstance(op, Comm) and op.op.value == "send"]
    assert len(tags) == len(set(tags)) and max(tags) < handshake_tag(0, S, m)


def test_stages_that_do_not_match_are_refused() -> None:
    """The wrong stages for the rank: a SpecError naming what the schedule expects."""
    schedule = pb.generate("v-half", 1, M)  # stages 0 and 1 on rank 0
    with pytest.raises(SpecError, match=r"rank 0 got stages \[0\] but the schedule .* puts "
                                        r"stages \[0, 1\] on it"):
        Executor(schedule, {0: torch.nn.Identity()}, lm_loss, None, rank=0)


def test_several_ranks_need_a_process_group() -> None:
    """A 4-rank schedule without torch.distributed is refused, not run."""
    schedule = pb.generate("1f1b", 4, 8)
    with pytest.raises(SpecError, match="needs torch.distributed"):
        Executor(schedule, {0: torch.nn.Identity()}, lm_loss, None, rank=0)


def test_a_later_batch_of_another_shape_is_agreed_again() -> None:
    """Shapes are agreed again when they change (batch size, sequence length): the losses of
    later, smaller batches equal plain autograd; a batch that does not split is refused."""
    schedule = pb.generate("1f1b", 1, M)
    model, stages, tokens, targets, _, _ = _setup(schedule)
    ex = Executor(schedule, stages, lm_loss, None, rank=0)
    ex.step(tokens, targets)
    for x, y in ((tokens[:M], targets[:M]), (tokens[:, :5], targets[:, :5])):
        with torch.no_grad():
            want = lm_loss(model(x), y).item()
        assert ex.step(x, y).loss == pytest.approx(want, abs=1e-6)
    with pytest.raises(SpecError, match="does not split into 4 equal microbatches"):
        ex.step(tokens[:6], targets[:6])


def test_peak_activation_memory_follows_the_schedule() -> None:
    """GPipe holds all m microbatches at once, 1F1B at p=1 only one: m times less."""
    peaks = {}
    for name in ("gpipe", "1f1b"):
        schedule = pb.generate(name, 1, M)
        _, stages, tokens, targets, _, _ = _setup(schedule)
        ex = Executor(schedule, stages, lm_loss, None, rank=0, measure_memory=True)
        peaks[name] = ex.step(tokens, targets).peak_activation_bytes
    assert peaks["1f1b"] > 0 and peaks["gpipe"] == M * peaks["1f1b"]


def test_emulated_stages_and_the_trace() -> None:
    """Emulated passes run any schedule; the trace has every action, begin <= ready <= end."""
    schedule = pb.generate("zb-v", 1, M)
    runners = {s: EmulatedStage(s, 2, ms=1.0, out_shape=(MBS, 8, 16)) for s in (0, 1)}
    res = Executor(schedule, runners, None, None, rank=0, record=True).step(
        torch.zeros(M * MBS, 8, dtype=torch.long), None)
    assert [t[0] for t in res.trace] == [str(a) for a in schedule.programs[0]]
    assert all(b <= r <= e for _, b, r, e in res.trace)
    # 3 passes of 1 ms per stage and microbatch, at least
    assert res.seconds >= 2 * 3 * M * 1e-3


def test_weights_tied_across_stages_turn_the_split_off_with_a_warning(caplog) -> None:
    """Embedding and head share a weight on rank 0 (V placement): BW instead, same gradients."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(16, 8)
    head = torch.nn.Linear(8, 16, bias=False)
    head.weight = emb.weight
    ref_emb = torch.nn.Embedding(16, 8)
    ref_emb.weight.data.copy_(emb.weight.data)
    tokens = torch.randint(0, 16, (M * MBS, 5))
    targets = torch.randint(0, 16, (M * MBS, 5))
    lm_loss(torch.nn.functional.linear(ref_emb(tokens), ref_emb.weight), targets).backward()
    schedule = pb.generate("v-half", 1, M)  # stages 0 and 1 both on rank 0
    with caplog.at_level("WARNING", logger="pipeblocks.runtime.stage"):
        ex = Executor(schedule, {0: torch.nn.Sequential(emb), 1: torch.nn.Sequential(head)},
                      lm_loss, None, rank=0)
    assert not ex.runners[0].split and not ex.runners[1].split
    assert "shared with stage 0" in caplog.text and "tied weights across stages" in caplog.text
    ex.step(tokens, targets)
    torch.testing.assert_close(emb.weight.grad, ref_emb.weight.grad, rtol=1e-5, atol=1e-7)
