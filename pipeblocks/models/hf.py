"""HuggingFace decoder-only models as a sequence of pipeline layers (``pipeblocks[hf]``).

:func:`decoder_layers` takes a ``LlamaForCausalLM``-like or ``GPT2LMHeadModel`` model and
returns its parts in forward order: the embedding, one part per decoder layer, and the final
norm with the head. The token ids are the batch; the padding mask (``attention_mask``, 1 for a
token, 0 for padding) and ``position_ids`` are side inputs, given to each part that asks for
them: every decoder layer builds its causal mask and (Llama) its rotary tables from them, so
only the hidden state travels between stages. The parts share the model's modules, so a tied
head (GPT-2) is found by :func:`pipeblocks.runtime.split.split`.

:func:`token_loss` is the causal-LM loss as (sum, count) over the labels that are not -100,
shifted by one as HF's own loss; with ``Executor(count_tokens=count_tokens)`` the pipeline's
loss is HF's token mean over the whole batch.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> [type(p).__name__ for p in decoder_layers(LlamaForCausalLM(cfg))]
    ['Embed', 'Layer', 'Layer', 'Head']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeblocks.errors import SpecError

__all__ = ["decoder_layers", "token_loss", "count_tokens", "Embed", "Layer", "Head", "HFSource"]


class Embed(nn.Module):
    """Token embedding (plus GPT-2's learned positions and dropout)."""

    def __init__(self, tokens: nn.Embedding, positions: nn.Embedding | None = None,
                 drop: nn.Module | None = None) -> None:
        super().__init__()
        self.tokens, self.positions = tokens, positions
        self.drop = drop if drop is not None else nn.Identity()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        h = self.tokens(input_ids)
        if self.positions is not None:
            h = h + self.positions(position_ids)
        return self.drop(h)  # type: ignore[no-any-return]


class Layer(nn.Module):
    """One decoder layer: its causal mask (and rotary tables) from the side inputs."""

    def __init__(self, layer: nn.Module, config: Any, rotary: nn.Module | None) -> None:
        super().__init__()
        self.layer, self.rotary = layer, rotary
        self._config = config

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        mask = create_causal_mask(config=self._config, inputs_embeds=hidden,
                                  attention_mask=attention_mask, cache=None,
                                  position_ids=position_ids)
        if self.rotary is not None:
            out = self.layer(hidden, attention_mask=mask, position_ids=position_ids,
                             position_embeddings=self.rotary(hidden, position_ids=position_ids))
        else:
            out = self.layer(hidden, attention_mask=mask, position_ids=position_ids)
        return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]


class Head(nn.Module):
    """The final norm and the language-model head: hidden states -> logits."""

    def __init__(self, norm: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden))  # type: ignore[no-any-return]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The parts of a HF decoder-only LM in forward order: embedding, layers, norm and head."""
    cfg = model.config  # type: ignore[union-attr]
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):  # Llama, Mistral, Qwen2 and the like
        rotary = inner.rotary_emb
        parts: list[nn.Module] = [Embed(inner.embed_tokens)]
        parts += [Layer(layer, cfg, rotary) for layer in inner.layers]
        return parts + [Head(inner.norm, model.lm_head)]  # type: ignore[arg-type]
    gpt = getattr(model, "transformer", None)
    if gpt is not None and hasattr(gpt, "h"):  # GPT-2
        parts = [Embed(gpt.wte, gpt.wpe, gpt.drop)]
        parts += [Layer(block, cfg, None) for block in gpt.h]
        return parts + [Head(gpt.ln_f, model.lm_head)]  # type: ignore[arg-type]
    raise SpecError(
        f"decoder_layers knows Llama-like (model.layers) and GPT-2 (transformer.h) causal LMs, "
        f"not {type(model).__name__}; list its embedding, layers and head yourself as modules "
        f"in forward order")


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal-LM loss summed over the predicted tokens, and their count (HF's shift)."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    want = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(pred, want, ignore_index=-100, reduction="sum")
    return total, (want != -100).sum()


def count_tokens(labels: torch.Tensor) -> int:
    """The number of tokens :func:`token_loss` counts in ``labels``."""
    return int((labels[:, 1:] != -100).sum())


class HFSource:
    """A HF causal LM as a :class:`pipeblocks.runtime.trainer.ModelSource`: random weights
    from ``make()`` (called after seeding, so every rank builds the same), random token
    batches with right padding, whose length cycles ``seq``, ``seq - 1``, ``seq - 2`` over
    the steps (the shapes are agreed again), and the token-mean loss."""

    def __init__(self, make: Any, *, vocab: int, seq: int, hidden: int, seed: int = 0) -> None:
        self.make, self.vocab, self.seq, self.hidden, self.seed = make, vocab, seq, hidden, seed

    @property
    def tokens_per_sample(self) -> int:
        return self.seq

    def build(self) -> list[nn.Module]:
        torch.manual_seed(self.seed)
        return decoder_layers(self.make())

    def layout(self, num_stages: int) -> tuple[int, ...]:
        """The decoder layers spread evenly, the embedding on stage 0, the head on the last."""
        from pipeblocks.runtime.split import ends_layout

        return ends_layout(len(self.build()) - 2, num_stages)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return token_loss(logits, labels)

    def count_tokens(self, labels: torch.Tensor) -> int:
        return count_tokens(labels)

    def batch(self, size: int, step: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        t = max(2, self.seq - step % 3)
        ids = torch.randint(0, self.vocab, (size, t), generator=g)
        lengths = torch.randint(2, t + 1, (size,), generator=g)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        side = {"attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
        return ids, ids.masked_fill(mask == 0, -100), side

    def describe(self) -> dict[str, Any]:
        return {"model": type(self.make()).__name__, "vocab": self.vocab, "hidden": self.hidden}

    def activation_shape(self, microbatch_size: int) -> tuple[int, ...]:
        return (microbatch_size, self.seq, self.hidden)
