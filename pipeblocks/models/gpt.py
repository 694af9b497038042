"""A small GPT (embedding, N pre-norm transformer blocks, head) and deterministic synthetic data.

Used by the demo, the runtime tests and the benchmarks. :meth:`TinyGPT.parts` gives the model
as a flat list (embedding, blocks..., head) for :func:`pipeblocks.runtime.split.split`, which
puts the embedding in stage 0 and the head (and so the loss) in the last stage.

    >>> cfg = GPTConfig(vocab=64, seq=8, dim=16, heads=2, layers=2)
    >>> model = TinyGPT(cfg, seed=0)
    >>> tokens, targets = synthetic_batch(cfg, batch=4, seed=0, step=0)
    >>> tuple(model(tokens).shape), tuple(targets.shape)
    ((4, 8, 64), (4, 8))
    >>> loss = lm_loss(model(tokens), targets).item()
    >>> abs(loss - math.log(64)) < 0.2   # chance level at init
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPTConfig", "TinyGPT", "Embedding", "Block", "Head", "synthetic_batch", "lm_loss",
           "GPTSource", "tiny_gpt"]


@dataclass(frozen=True, slots=True)
class GPTConfig:
    """Sizes of the small GPT: vocabulary, sequence length, width, heads and blocks."""

    vocab: int = 256
    seq: int = 32
    dim: int = 64
    heads: int = 4
    layers: int = 8

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim must be a multiple of heads (got dim={self.dim}, heads={self.heads})")


class Embedding(nn.Module):
    """Token and learned position embeddings: (b, t) int64 -> (b, t, dim)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.dim)
        self.pos = nn.Embedding(cfg.seq, cfg.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        return self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4x GELU MLP, both residual."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.fc = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.out = nn.Linear(4 * cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # the fused qkv rows are grouped by head (q, k, v of head 0, then head 1, ...), so a
        # tensor-parallel column shard holds whole heads (runtime/tensor_parallel.py): -1 is
        # this rank's heads, all of them without tensor parallel
        qkv = self.qkv(self.ln1(x)).view(b, t, -1, 3, d // self.heads)
        # (b, t, heads, 3, d/heads) -> 3 x (b, heads, t, d/heads)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, -1))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Head(nn.Module):
    """Final layer norm and the vocabulary projection: (b, t, dim) -> logits (b, t, vocab)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.dim)
        self.lm = nn.Linear(cfg.dim, cfg.vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(self.ln(x))


class TinyGPT(nn.Sequential):
    """Embedding, ``cfg.layers`` blocks and the head, initialised deterministically from ``seed``.

    It is an ``nn.Sequential`` so the unpartitioned reference and the pipeline stages run the
    very same modules in the very same order.
    """

    def __init__(self, cfg: GPTConfig, seed: int = 0) -> None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            super().__init__(Embedding(cfg), *(Block(cfg) for _ in range(cfg.layers)), Head(cfg))
            for name, p in self.named_parameters():
                if name.endswith("weight") and p.dim() == 2:
                    nn.init.normal_(p, std=0.02)
                    if name.endswith(("proj.weight", "out.weight")):
                        # GPT-2's scaled init of the residual projections
                        p.data.mul_(1 / math.sqrt(2 * cfg.layers))
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
        finally:
            torch.random.set_rng_state(gen_state)
        self.cfg = cfg

    def parts(self) -> list[nn.Module]:
        """The model as a flat list for splitting: embedding, blocks, head."""
        return list(self)


def synthetic_batch(
    cfg: GPTConfig, batch: int, seed: int = 0, step: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences that follow a fixed random permutation, and their next-token targets.

    Each sequence starts at a random token and then applies the permutation (fixed by
    ``seed``) token after token; each ``step`` draws new starts. Only the first token is
    unpredictable, so the loss can fall from ln(vocab) to about ln(vocab) / seq, and a small
    model visibly learns within ten steps.
    """
    perm = torch.randperm(cfg.vocab, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
    seq = [torch.randint(0, cfg.vocab, (batch,), generator=g)]
    for _ in range(cfg.seq):
        seq.append(perm[seq[-1]])
    full = torch.stack(seq, dim=1)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@dataclass(frozen=True)
class GPTSource:
    """The small GPT as a :class:`pipeblocks.runtime.trainer.ModelSource`: what the trainer
    builds, feeds and checks (the same weights and data on every rank, from ``seed``)."""

    cfg: GPTConfig
    seed: int = 0

    @property
    def tokens_per_sample(self) -> int:
        return self.cfg.seq

    def build(self) -> nn.Sequential:
        return TinyGPT(self.cfg, seed=self.seed)

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return lm_loss(output, targets)

    def batch(self, size: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return synthetic_batch(self.cfg, size, seed=self.seed, step=step)

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    def activation_shape(self, microbatch_size: int) -> tuple[int, ...]:
        return (microbatch_size, self.cfg.seq, self.cfg.dim)

    def layout(self, num_stages: int) -> tuple[int, ...]:
        """The blocks spread evenly, the embedding on stage 0 and the head on the last."""
        from pipeblocks.runtime.split import ends_layout

        return ends_layout(self.cfg.layers, num_stages)


def tiny_gpt(num_stages: int, seed: int = 0, **sizes: int) -> GPTSource:
    """The ``--model`` factory of the small GPT (``tiny-gpt``): by default the smallest
    multiple of ``num_stages`` >= 8 blocks; ``sizes`` override :class:`GPTConfig` fields."""
    layers = sizes.pop("layers", None) or num_stages * math.ceil(8 / num_stages)
    return GPTSource(GPTConfig(layers=layers, **sizes), seed=seed)
