"""The small GPT and the stage splitter: shapes, determinism, layouts, and the split's math."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.split import ends_layout, even_layout, split

pytestmark = pytest.mark.torch

CFG = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=4)


@given(st.integers(1, 40), st.integers(1, 40))
def test_even_layout_is_balanced_and_complete(parts: int, stages: int) -> None:
    """Counts sum to the parts, differ by at most one, larger first; too few parts refused."""
    if parts < stages:
        with pytest.raises(SpecError, match="non-empty stages"):
            even_layout(parts, stages)
        return
    counts = even_layout(parts, stages)
    assert len(counts) == stages and sum(counts) == parts
    assert max(counts) - min(counts) <= 1 and list(counts) == sorted(counts, reverse=True)


def test_ends_layout_puts_embedding_first_and_head_last() -> None:
    """8 blocks on 4 stages: (1+2, 2, 2, 2+1); the first stage starts with the embedding."""
    assert ends_layout(8, 4) == (3, 2, 2, 3)
    model = TinyGPT(GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=8))
    stages = split(model, 4, ends_layout(8, 4))
    assert type(stages[0][0]).__name__ == "Embedding" and type(stages[-1][-1]).__name__ == "Head"


def test_split_stages_compose_to_the_model() -> None:
    """Running the stages one after another is the unsplit model, module for module."""
    model = TinyGPT(CFG, seed=0)
    tokens, _ = synthetic_batch(CFG, 3)
    h = tokens
    for stage in split(model, 3, ends_layout(4, 3)):
        h = stage(h)
    assert torch.equal(h, model(tokens))


@pytest.mark.parametrize("layout, match", [((1, 3), "covers 4 parts but the model has 6"),
                                           ((2, 2, 2), "has 3 stages but the pipeline has 2"),
                                           ((6, 0), "empty stage")])
def test_bad_layouts_are_refused(layout, match) -> None:
    """A layout with the wrong count, total or an empty stage is a SpecError naming it."""
    with pytest.raises(SpecError, match=match):
        split(TinyGPT(CFG), 2, layout)


def test_model_and_data_are_deterministic_by_seed() -> None:
    """Same seed, same weights and batches; another seed or step, other ones."""
    a, b, c = TinyGPT(CFG, seed=1), TinyGPT(CFG, seed=1), TinyGPT(CFG, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a[0].tok.weight, c[0].tok.weight)
    x1, y1 = synthetic_batch(CFG, 4, seed=1, step=0)
    x2, y2 = synthetic_batch(CFG, 4, seed=1, step=0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, synthetic_batch(CFG, 4, seed=1, step=1)[0])
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the next tokens


def test_model_does_not_disturb_the_global_rng() -> None:
    """Building a model leaves torch's global random state as it was."""
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    TinyGPT(CFG, seed=3)
    assert torch.equal(before, torch.random.get_rng_state())


def test_the_task_is_learnable() -> None:
    """A few Adam steps on one process lower the loss from chance (ln vocab)."""
    model = TinyGPT(CFG, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(12):
        tokens, targets = synthetic_batch(CFG, 16, seed=0, step=step)
        loss = lm_loss(model(tokens), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


def test_config_rejects_dim_not_divisible_by_heads() -> None:
    """dim must split evenly across heads."""
    with pytest.raises(ValueError, match="multiple of heads"):
        GPTConfig(dim=10, heads=4)


def test_split_accepts_a_plain_list_of_blocks() -> None:
    """A list of modules splits like an nn.Sequential."""
    stages = split([nn.Linear(2, 2) for _ in range(4)], 2)
    assert [len(s) for s in stages] == [2, 2]
