"""One rank of the HuggingFace runtime tests (started by pipeblocks.runtime.launch.launch).

``python hf_worker.py MODEL OUT``: for every schedule of :data:`SCHEDULES` (and one search
result), three SGD steps of the tiny MODEL (llama or gpt2) with a token-mean loss and a new
sequence length each step; rank 0 writes each step's loss and every gradient by name, and each
rank's tied weights after the steps. Then, on 1f1b without optimizer: one step, the gradients
after ``clip_grad_norm_`` and the norm, and an ``eval`` loss.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from pipeblocks.generators import generate
from pipeblocks.models.hf import count_tokens, decoder_layers, token_loss
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.faults import Guard
from pipeblocks.runtime.split import ends_layout, split
from pipeblocks.runtime.ties import unique_parameters
from pipeblocks.search import search

P, M, MBS, VOCAB, LR, CLIP = 4, 8, 2, 64, 0.05, 0.05
SCHEDULES = ("1f1b", "interleaved-1f1b", "zb-h1", "zb-v", "v-half", "v-min", "dualpipe-v")
SEQ = (8, 6, 7)  # the sequence length of each step


def build(kind: str, layers: int) -> torch.nn.Module:
    """The tiny model (hidden 32, fp32, no dropout), the same weights in every process."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager"))
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=16,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
        bos_token_id=0, eos_token_id=0))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Token ids, labels (-100 on padding) and the side inputs of step ``step``."""
    g = torch.Generator().manual_seed(100 + step)
    b, t = M * MBS, SEQ[step % len(SEQ)]
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()  # right padding
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, ids.masked_fill(mask == 0, -100), {"attention_mask": mask, "position_ids": pos}


def run(kind: str, schedule, rank: int, guard: Guard, steps: int = 3, lr: float = LR):
    S = schedule.spec.num_stages
    model = build(kind, S)
    parts = split(decoder_layers(model), S, ends_layout(S, S))
    mine = {s: parts[s] for s in schedule.spec.stages_of(rank)}
    opt = torch.optim.SGD(unique_parameters(mine.values()), lr=lr) if lr else None
    ex = Executor(schedule, mine, token_loss, opt, guard=guard, count_tokens=count_tokens)
    names = ex.names = {id(p): n for n, p in model.named_parameters()}  # type: ignore[attr-defined]
    out = []
    for step in range(steps):
        ids, labels, side = batch(step)
        if opt is None:
            ex.zero_grad()
        res = ex.step(ids, labels, side=side)
        grads = {names[id(p)]: p.grad.clone() for p in ex.parameters() if p.grad is not None}
        out.append((res.loss, grads))
    tied = {names[id(p)]: p.detach().clone() for p in ex.parameters()}
    return ex, out, tied


def gather(obj):
    got = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, got, dst=0)
    return got


def main() -> int:
    kind, path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    guard = Guard(rank, timeout=60.0)
    found = search((P, M), budget=0.75, family="v").schedule
    results = {}
    for label, s in [*((n, generate(n, P, M)) for n in SCHEDULES), ("search", found)]:
        dist.barrier()
        _, out, tied = run(kind, s, rank, guard)
        results[label] = gather((out, tied))
    dist.barrier()
    ex, _, _ = run(kind, generate("1f1b", P, M), rank, guard, steps=1, lr=0.0)
    norm = ex.clip_grad_norm_(CLIP)
    after = {ex.names[id(p)]: p.grad.clone() for p in ex.parameters() if p.grad is not None}
    ids, labels, side = batch(1)
    results["clip"] = gather((norm, after, ex.eval(ids, labels, side=side).loss))
    guard.stop()
    if rank == 0:
        torch.save(results, path)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
