"""Schedule generators, one module per family, each a pure function ``spec -> Schedule``.

    >>> from pipeblocks.generators import generate
    >>> print(generate("1f1b", num_ranks=2, num_microbatches=3))
    rank 0 |  F0  F1 BW0  F2 BW1 BW2
    rank 1 |  F0 BW0  F1 BW1  F2 BW2
"""

from pipeblocks.generators.registry import Generator, generate, generators, get, names, register

__all__ = ["Generator", "register", "get", "names", "generators", "generate"]
