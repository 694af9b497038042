"""Models for the demo, tests and benchmarks (``split`` is re-exported from the runtime).

    >>> from pipeblocks.models import GPTConfig, TinyGPT, split, ends_layout
    >>> cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=4)
    >>> [len(s) for s in split(TinyGPT(cfg), 2, ends_layout(4, 2))]
    [3, 3]
"""

from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.runtime.split import ends_layout, even_layout, split

__all__ = ["GPTConfig", "TinyGPT", "ends_layout", "even_layout", "lm_loss", "split",
           "synthetic_batch"]
