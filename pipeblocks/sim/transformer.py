"""The transformer preset: pass times, transfer times and memory from model and machine numbers.

Per transformer layer, with s = sequence length, b = microbatch size, h = hidden size,
a = attention heads (FLOPs from the ZB paper, Table 1; memory from docs/design.md, "Memory
accounting", which takes it from Korthikanti et al. 2022):

- F = s·b·h·(24h + 4s), B = s·b·h·(24h + 8s), W = 24·s·b·h² FLOPs.
- mem_f = s·b·(34h + 5a·s), mem_w = 32·s·b·h. These counts are bytes for 2-byte (16-bit)
  activations, so we scale them by ``bytes_per_element / 2``.

The output layer (logits, h x vocabulary) sits on the last stage: F, B and W each cost
2·s·b·h·V FLOPs; it holds the fp32 logits (4·s·b·V bytes) until B and its input (s·b·h
elements) until W. The embedding lookup on the first stage is a gather: no FLOPs worth
counting and no activation beyond what layer 1 keeps, so the first stage is not heavier here
(its parameter memory, which this model does not track, is). Layers are split over the S
stages as evenly as possible; the L mod S extra layers go to stages 1, 2, ... (not stage 0).

Times are in seconds: FLOPs / ``Machine.flops``; a transfer (one microbatch's activation or
gradient, s·b·h elements) takes ``latency + bytes / bandwidth``.

    >>> from pipeblocks.ir import Pass, PipelineSpec
    >>> gpt = TransformerModel(layers=4, hidden=1024, heads=16, seq_len=1024, vocab=0)
    >>> costs = TransformerCosts(gpt, Machine(flops=1e14, bandwidth=1e10, latency=0.0))
    >>> spec = PipelineSpec(2, 4)
    >>> round(costs.pass_time(spec, 0, Pass.F) * 1e3, 4)   # 2 layers, milliseconds
    0.6013
    >>> costs.memory(spec, 1)   # bytes: 2 layers of mem_f, mem_w
    (239075328.0, 67108864.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import PipelineSpec

__all__ = [
    "TransformerModel",
    "Machine",
    "TransformerCosts",
    "layers_of",
    "stage_memory",
    "DEFAULT_MODEL",
]


# Integer sizes above this are refused: products of a few of them must stay floats (a larger
# Python int makes float arithmetic raise OverflowError instead of giving inf).
_MAX_INT = 2**53


def _positive(owner: str, name: str, value: float, *, zero_ok: bool = False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int | float) or value != value
    huge = not bad and isinstance(value, int) and abs(value) > _MAX_INT
    if bad or huge or math.isinf(value) or value < 0 or (value == 0 and not zero_ok):
        need = ">= 0" if zero_ok else "> 0"
        raise SpecError(f"{owner} field '{name}' must be a finite number {need} "
                        f"(got {_short(value)})")


def _short(value: object) -> str:
    """``repr(value)``, cut to 40 characters (a 4000-digit integer is not a message)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


@dataclass(frozen=True, slots=True)
class TransformerModel:
    """A GPT-like model: ``layers`` blocks of ``hidden`` width, ``heads`` heads, one microbatch
    of ``microbatch_size`` sequences of ``seq_len`` tokens; ``vocab`` = 0 leaves out the
    output layer."""

    layers: int
    hidden: int
    heads: int
    seq_len: int
    vocab: int = 0
    microbatch_size: int = 1
    bytes_per_element: float = 2.0

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "seq_len", "microbatch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INT:
                raise SpecError(f"model field '{name}' must be an integer in 1..2**53 "
                                f"(got {_short(value)})")
        vocab = self.vocab
        if isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 <= vocab <= _MAX_INT:
            raise SpecError(f"model field 'vocab' must be an integer in 0..2**53 "
                            f"(got {_short(vocab)})")
        _positive("model", "bytes_per_element", self.bytes_per_element)

    @property
    def _sbh(self) -> float:
        return float(self.seq_len * self.microbatch_size * self.hidden)

    def layer_flops(self) -> tuple[float, float, float]:
        """FLOPs of one layer's F, B and W for one microbatch (ZB Table 1)."""
        s, h = self.seq_len, self.hidden
        return self._sbh * (24 * h + 4 * s), self._sbh * (24 * h + 8 * s), self._sbh * 24 * h

    def output_flops(self) -> float:
        """FLOPs of the output layer's F (and of its B, and of its W): 2·s·b·h·V."""
        return 2.0 * self._sbh * self.vocab

    def layer_memory(self) -> tuple[float, float]:
        """Bytes one layer's F keeps (mem_f) and its W still needs after B (mem_w)."""
        sb = self.seq_len * self.microbatch_size
        scale = self.bytes_per_element / 2.0  # the counts are bytes at 2 bytes per element
        mem_f = sb * (34 * self.hidden + 5 * self.heads * self.seq_len) * scale
        return float(mem_f), float(32 * sb * self.hidden * scale)

    def output_memory(self) -> tuple[float, float]:
        """Bytes the output layer keeps: fp32 logits and its input until B, its input until W."""
        if self.vocab == 0:
            return 0.0, 0.0
        held_input = self._sbh * self.bytes_per_element
        logits = 4.0 * self.seq_len * self.microbatch_size * self.vocab
        return logits + held_input, held_input

    def transfer_bytes(self) -> float:
        """Bytes of one activation or input gradient between stages: s·b·h elements."""
        return self._sbh * self.bytes_per_element


DEFAULT_MODEL = TransformerModel(
    layers=24, hidden=2048, heads=16, seq_len=2048, vocab=50304, microbatch_size=1
)
"""A 1.3B-parameter GPT (GPT-3 XL shape): what ``--memory-model transformer`` uses when no
model is given."""


@dataclass(frozen=True, slots=True)
class Machine:
    """Sustained FLOP/s of one device; bandwidth (bytes/s) and latency (s) of one link."""

    flops: float
    bandwidth: float = math.inf
    latency: float = 0.0

    def __post_init__(self) -> None:
        _positive("machine", "flops", self.flops)
        bw = self.bandwidth
        if isinstance(bw, bool) or not isinstance(bw, int | float) or not bw > 0 or (
                isinstance(bw, int) and bw > _MAX_INT):  # math.inf (the default) is fine
            raise SpecError(
                f"machine field 'bandwidth' must be a number > 0 (got {_short(bw)})"
            )
        _positive("machine", "latency", self.latency, zero_ok=True)


def layers_of(num_layers: int, num_stages: int, stage: int) -> int:
    """Layers on ``stage`` when ``num_layers`` are split over ``num_stages``.

    >>> [layers_of(10, 4, s) for s in range(4)]
    [2, 3, 3, 2]
    """
    if num_layers < num_stages:
        raise SpecError(
            f"the transformer preset needs at least one layer per stage (layers={num_layers}, "
            f"stages={num_stages}); use fewer ranks or stages per rank, or a deeper model"
        )
    base, extra = divmod(num_layers, num_stages)
    return base + (1 if 1 <= stage <= extra else 0)


@dataclass(frozen=True, slots=True)
class TransformerCosts:
    """The cost model of ``model`` on ``machine`` (seconds, bytes)."""

    model: TransformerModel
    machine: Machine

    @property
    def memory_unit(self) -> str:
        return "bytes"

    def describe(self) -> str:
        """For output headers: times per stage, in seconds."""
        return "transformer preset (per stage, seconds)"

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        n = layers_of(self.model.layers, spec.num_stages, stage)
        f, b, w = (n * x for x in self.model.layer_flops())
        if stage == spec.num_stages - 1:
            out = self.model.output_flops()
            f, b, w = f + out, b + out, w + out
        flops = {Pass.F: f, Pass.B: b, Pass.W: w, Pass.BW: b + w}[kind]
        return flops / self.machine.flops

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        if src_rank == dst_rank:
            return 0.0
        return self.machine.latency + self.model.transfer_bytes() / self.machine.bandwidth

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return stage_memory(self.model, spec.num_stages, stage)


def stage_memory(model: TransformerModel, num_stages: int, stage: int) -> tuple[float, float]:
    """(mem_f, mem_w) in bytes of ``stage``'s layers, plus the output layer on the last stage."""
    n = layers_of(model.layers, num_stages, stage)
    mem_f, mem_w = (n * x for x in model.layer_memory())
    if stage == num_stages - 1:
        of, ow = model.output_memory()
        mem_f, mem_w = mem_f + of, mem_w + ow
    return mem_f, mem_w
