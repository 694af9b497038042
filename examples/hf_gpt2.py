"""A tiny GPT-2 whose head is tied to its token embedding, for ``pipeblocks train --model``.

    $ pipeblocks train --model examples/hf_gpt2.py:build --ranks 4 --schedule 1f1b \\
          --microbatches 8 --steps 2 --check-grads --json

Under 1f1b the embedding (stage 0) and the head (the last stage) sit on ranks 0 and 3: the
split finds the tie and the executor sums its gradient over both ranks every step, so the two
copies stay identical. Needs ``pip install 'pipeblocks[hf]'``.
"""

from __future__ import annotations

from pipeblocks.models.hf import HFSource


def build(num_stages: int, seed: int = 0) -> HFSource:
    """One block per stage (at least 2), hidden 32, no dropout (gradients comparable)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=max(2, num_stages), n_head=4,
                     n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return HFSource(lambda: GPT2LMHeadModel(cfg), vocab=128, seq=16, hidden=32, seed=seed)
