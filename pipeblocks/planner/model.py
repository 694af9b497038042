"""Model numbers: parameters, FLOPs and activation bytes of a GPT-like transformer.

Per layer, with h = hidden, f = FFN width (4h by default), a = heads, k = key/value heads
(a by default), s = sequence length, b = microbatch size, t = tensor-parallel degree (with
sequence parallelism, so every activation is split t ways):

- parameters: ``2h^2 + 2h^2 k/a`` (Q, O and the narrower K, V) ``+ 2hf`` (the MLP)
  ``+ 4h + 3h + f + 2hk/a`` (layer norms and biases);
- FLOPs per token of F: twice the matrix parameters (one multiply-add each) plus ``4sh`` for
  the attention scores and their use; B (input gradient) is the same matrices again plus
  ``8sh``; W (weight gradient) is the matrices only. With f = 4h and k = a this is the Zero
  Bubble paper's Table 1: F = sbh(24h + 4s), B = sbh(24h + 8s), W = 24sbh^2;
- activation bytes F keeps, per token (Korthikanti et al. 2022, section 4, generalised):
  e = ``2 + 1 + (1 + 2k/a) + 1 + 1 + 2f/h`` activation elements of width h (the two layer-norm
  inputs, the QKV input, Q, K and V, the attention output, the MLP input, the MLP's hidden
  activation before and after GeLU) times ``act_bytes``, plus with ``dropout`` one mask byte
  for each of the two residual dropouts (2h), plus the attention scores: ``flash`` keeps only
  an fp32 log-sum-exp per head (4a), the plain path keeps the softmax output, and with dropout
  its mask and output (``(act_bytes + dropout * (1 + act_bytes)) * a * s``). Megatron's
  defaults (16-bit, dropout, no flash, f = 4h, k = a) give ``sbh(34 + 5as/h)``;
- W still needs the inputs of the four products after B: ``(3 + f/h) h act_bytes`` per token;
- with full recomputation a layer keeps only its input, ``h act_bytes`` per token;
- embedding: ``V h`` parameters (plus ``s h`` positions), no FLOPs worth counting; the output
  layer (untied): ``V h`` parameters, F = B = W = ``2sbhV`` FLOPs, and it keeps the fp32 logits
  (``4V`` bytes a token) and the inputs of its layer norm and its product until B, those
  inputs until W.

    >>> m = parse_model("layers=24,hidden=2048,heads=16,seq=2048,vocab=50304")
    >>> round(m.params() / 1e9, 3)   # GPT-3 XL with an untied output layer
    1.419
    >>> m.layer_flops(tokens=1)[2] == 24 * 2048**2   # W: the matrices only
    True
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from pipeblocks.errors import SpecError

if TYPE_CHECKING:
    from pipeblocks.planner.measured import Measured

__all__ = ["ModelSpec", "parse_model", "MODEL_KEYS"]

MODEL_KEYS = ("layers", "hidden", "heads", "seq", "vocab", "ffn", "kv_heads", "act_bytes",
              "dropout", "flash")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A GPT-like model; ``ffn`` 0 means 4 * hidden, ``kv_heads`` 0 means ``heads``;
    ``act_bytes`` per activation element, ``dropout`` and ``flash`` (attention) 0 or 1;
    ``measured``: costs from a profile that replace the formulas' activation bytes (and, in
    the grid, the FLOPs model's times; :mod:`~pipeblocks.planner.measured`)."""

    layers: int
    hidden: int
    heads: int
    seq: int
    vocab: int
    ffn: int = 0
    kv_heads: int = 0
    act_bytes: int = 2
    dropout: int = 1
    flash: int = 0
    measured: Measured | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "measured":
                continue
            v = getattr(self, f.name)
            low = 0 if f.name in ("ffn", "kv_heads", "vocab", "dropout", "flash") else 1
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 2**40:
                raise SpecError(f"model field '{f.name}' must be an integer in {low}..2**40 "
                                f"(got {v!r}); e.g. --model layers=24,hidden=2048,heads=16,"
                                f"seq=2048,vocab=50304")
        if self.dropout > 1 or self.flash > 1:
            raise SpecError(f"model fields 'dropout' and 'flash' are 0 or 1 (got dropout="
                            f"{self.dropout}, flash={self.flash})")
        if self.hidden % self.heads:
            raise SpecError(f"model hidden must be a multiple of heads (got hidden="
                            f"{self.hidden}, heads={self.heads}); change one of them")
        if self.kv_heads and self.heads % self.kv_heads:
            raise SpecError(f"model heads must be a multiple of kv_heads (got heads="
                            f"{self.heads}, kv_heads={self.kv_heads})")

    @property
    def f(self) -> int:
        return self.ffn or 4 * self.hidden

    @property
    def kv_ratio(self) -> float:
        return (self.kv_heads or self.heads) / self.heads

    def layer_params(self) -> float:
        h, f, k = self.hidden, self.f, self.kv_ratio
        matrices = 2 * h * h + 2 * h * h * k + 2 * h * f
        return matrices + 4 * h + 3 * h + f + 2 * h * k

    def embedding_params(self) -> float:
        return float(self.vocab * self.hidden + self.seq * self.hidden)

    def head_params(self) -> float:
        return float(self.vocab * self.hidden + 2 * self.hidden)  # with the final layer norm

    def params(self) -> float:
        """All parameters (untied embedding and output layer)."""
        return self.layers * self.layer_params() + self.embedding_params() + self.head_params()

    def layer_flops(self, tokens: float) -> tuple[float, float, float]:
        """F, B, W FLOPs of one layer for ``tokens`` = s * b tokens (all tensor ranks)."""
        h, f, k, s = self.hidden, self.f, self.kv_ratio, self.seq
        mat = 2.0 * (2 * h * h + 2 * h * h * k + 2 * h * f) * tokens
        return mat + 4.0 * s * h * tokens, mat + 8.0 * s * h * tokens, mat

    def head_flops(self, tokens: float) -> float:
        """FLOPs of the output layer's F (and of its B, and of its W)."""
        return 2.0 * tokens * self.hidden * self.vocab

    def layer_activation(self, tokens: float, *, recompute: bool) -> tuple[float, float]:
        """(mem_f, mem_w) bytes of one layer for ``tokens`` = s * b (before the t split)."""
        h, f, k, nb = self.hidden, self.f, self.kv_ratio, self.act_bytes
        if recompute:
            return tokens * h * nb, tokens * h * nb
        if self.measured is not None:
            return self._scaled(self.measured.layer, tokens)
        width = (2 + 1 + (1 + 2 * k) + 1 + 1) * h + 2 * f  # elements a token
        masks = 2 * h if self.dropout else 0  # one byte each, the two residual dropouts
        if self.flash:
            scores = 4.0 * self.heads  # fp32 log-sum-exp per head
        else:
            scores = (nb + self.dropout * (1 + nb)) * self.heads * self.seq
        return tokens * (width * nb + masks + scores), tokens * (3 * h + f) * nb

    def head_activation(self, tokens: float) -> tuple[float, float]:
        """(mem_f, mem_w) bytes of the output layer: fp32 logits and its inputs; its inputs."""
        if self.measured is not None:
            return self._scaled(self.measured.head, tokens)
        held = 2.0 * tokens * self.hidden * self.act_bytes  # final norm's input, product's
        return 4.0 * tokens * self.vocab + held, held

    def embedding_activation(self, tokens: float) -> tuple[float, float]:
        """(mem_f, mem_w) bytes of the embedding: measured, else 0 (token ids only)."""
        if self.measured is not None:
            return self._scaled(self.measured.embedding, tokens)
        return 0.0, 0.0

    def _scaled(self, q: tuple[float, ...], tokens: float) -> tuple[float, float]:
        assert self.measured is not None
        r = tokens / (self.measured.microbatch_size * self.seq)
        return q[3] * r, q[4] * r

    def flops_per_sequence(self) -> float:
        """Model FLOPs of one sequence's F + B + W (no recomputation): what MFU counts."""
        f, b, w = self.layer_flops(self.seq)
        return self.layers * (f + b + w) + 3 * self.head_flops(self.seq)


def parse_model(text: str) -> ModelSpec:
    """``layers=L,hidden=H,heads=A,seq=S,vocab=V[,ffn=F,kv_heads=K]`` as a :class:`ModelSpec`
    (a model file with measured costs: :func:`pipeblocks.planner.measured.read_model`)."""
    values: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or key not in MODEL_KEYS:
            raise SpecError(f"--model item {item!r} is not KEY=VALUE with KEY one of "
                            f"{', '.join(MODEL_KEYS)}")
        try:
            values[key] = int(raw)
        except ValueError:
            raise SpecError(f"--model {key} must be an integer (got {raw!r})") from None
    missing = [k for k in MODEL_KEYS[:5] if k not in values]
    if missing:
        raise SpecError(f"--model needs {', '.join(missing)} (got {text!r}); e.g. "
                        f"layers=24,hidden=2048,heads=16,seq=2048,vocab=50304")
    return ModelSpec(**values)
