"""Pause the cyclic garbage collector while building or walking very large schedules.

Generating, validating or simulating a schedule of a million passes creates a few objects per
pass and no reference cycles, yet every few hundred allocations the collector scans the young
objects and, now and then, the whole growing heap: a quarter to a third of the run time at
p = 64, m = 512. :func:`no_gc` switches it off for the duration and restores the previous state
(nested uses are fine: only the outermost one re-enables it).

    >>> import gc
    >>> with no_gc():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["no_gc"]


@contextmanager
def no_gc() -> Iterator[None]:
    """Disable the cyclic collector inside the block; re-enable it after if it was on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
