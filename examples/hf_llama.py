"""A tiny Llama (random weights, from a config) for ``pipeblocks train --model``.

    $ pipeblocks train --model examples/hf_llama.py:build --ranks 4 --schedule v-half \\
          --microbatches 8 --steps 2 --check-grads --json

The factory protocol (docs/models.md): ``build(num_stages, seed)`` returns a ModelSource.
Padding masks and position ids are side inputs; each decoder layer makes its causal mask and
rotary tables from them. Needs ``pip install 'pipeblocks[hf]'``.
"""

from __future__ import annotations

from pipeblocks.models.hf import HFSource


def build(num_stages: int, seed: int = 0) -> HFSource:
    """One decoder layer per stage (at least 2), hidden 32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=max(2, num_stages), num_attention_heads=4,
                      num_key_value_heads=2, attn_implementation="eager")
    return HFSource(lambda: LlamaForCausalLM(cfg), vocab=128, seq=16, hidden=32, seed=seed)
