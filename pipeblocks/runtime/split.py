"""Split a model, given as a list of blocks or an ``nn.Sequential``, into pipeline stages.

A *layout* is the number of consecutive parts each stage takes, in forward order. The default
spreads the parts as evenly as possible (the first stages take one more when they do not divide);
:func:`ends_layout` spreads only the repeated blocks and adds the embedding to stage 0 and the
head to the last stage.

    >>> from torch import nn
    >>> parts = [nn.Linear(2, 2) for _ in range(5)]
    >>> even_layout(5, 2), ends_layout(num_blocks=3, num_stages=2)
    ((3, 2), (3, 2))
    >>> [len(s) for s in split(parts, 2)]
    [3, 2]
    >>> split(parts, 2, layout=(1, 3))
    Traceback (most recent call last):
    ...
    pipeblocks.errors.SpecError: layout (1, 3) covers 4 parts but the model has 5; give one count per stage summing to 5
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.runtime.ties import find_ties

__all__ = ["even_layout", "ends_layout", "split", "layers_of"]


def even_layout(num_parts: int, num_stages: int) -> tuple[int, ...]:
    """Counts of consecutive parts per stage, as equal as possible, the larger ones first."""
    if num_stages < 1:
        raise SpecError(f"num_stages must be >= 1 (got {num_stages})")
    if num_parts < num_stages:
        raise SpecError(
            f"cannot split {num_parts} parts into {num_stages} non-empty stages; "
            f"use a model with at least {num_stages} blocks or fewer stages"
        )
    q, r = divmod(num_parts, num_stages)
    return tuple(q + (1 if i < r else 0) for i in range(num_stages))


def ends_layout(num_blocks: int, num_stages: int, head: int = 1, tail: int = 1) -> tuple[int, ...]:
    """Layout of ``head`` leading parts, ``num_blocks`` blocks and ``tail`` trailing parts.

    The blocks are spread evenly; the leading parts (the embedding) join stage 0 and the
    trailing ones (the head, hence the loss) join the last stage.
    """
    counts = list(even_layout(num_blocks, num_stages))
    counts[0] += head
    counts[-1] += tail
    return tuple(counts)


def split(
    model: nn.Sequential | Sequence[nn.Module],
    num_stages: int,
    layout: Sequence[int] | None = None,
) -> list[nn.Sequential]:
    """The stages as ``nn.Sequential``s of consecutive parts (the modules are shared, not copied)."""
    parts = layers_of(model)
    counts = even_layout(len(parts), num_stages) if layout is None else tuple(layout)
    if len(counts) != num_stages:
        raise SpecError(
            f"layout {counts} has {len(counts)} stages but the pipeline has {num_stages}; "
            f"give one count per stage"
        )
    if any(c < 1 for c in counts):
        raise SpecError(f"layout {counts} has an empty stage; every stage needs at least one part")
    if sum(counts) != len(parts):
        raise SpecError(
            f"layout {counts} covers {sum(counts)} parts but the model has {len(parts)}; "
            f"give one count per stage summing to {len(parts)}"
        )
    stages, start = [], 0
    for c in counts:
        stages.append(nn.Sequential(*parts[start : start + c]))
        start += c
    ties = find_ties(stages)
    for st in stages:  # every stage knows every tie: the executor sums their gradients
        st.pipeblocks_ties = ties
    return stages


def layers_of(model: nn.Sequential | Sequence[nn.Module]) -> list[nn.Module]:
    """The model's layers in forward order, or an error saying how to give them."""
    if isinstance(model, (nn.Sequential, nn.ModuleList)) or (
            isinstance(model, (list, tuple)) and all(isinstance(m, nn.Module) for m in model)):
        return list(model)
    raise SpecError(
        f"split takes a sequence of layers (nn.Sequential, nn.ModuleList or a list of modules) "
        f"but got {type(model).__name__}; list the model's layers in forward order (for a "
        f"HuggingFace decoder use pipeblocks.models.hf.decoder_layers)")
