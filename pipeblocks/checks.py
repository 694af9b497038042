"""Checks at the edges: argument types of the public API, and optional dependencies.

A wrong type is one clear error, never a crash inside; a missing optional dependency is one
line naming the pipeblocks extra that installs it (:func:`require`), never an ImportError
traceback. :func:`expect` is the one helper the public functions call on their arguments; it
raises :class:`~pipeblocks.errors.ArgTypeError` naming the function, the argument, the
expected type, the value given and a fix. ``bool`` is never accepted as a number (``True`` is
an ``int`` to Python, not a count of microbatches).

    >>> expect("generate", "num_microbatches", "2", int)
    Traceback (most recent call last):
    ...
    pipeblocks.errors.ArgTypeError: generate(): num_microbatches must be an int (got '2', a str); pass a whole number, e.g. 8 or int('2')
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeblocks.errors import ArgTypeError, MissingDependencyError

__all__ = ["expect", "require", "EXTRAS"]

EXTRAS = {"torch": "torch", "matplotlib": "plot", "transformers": "hf"}
"""The pipeblocks extra (pyproject.toml) that installs each optional dependency."""

# What to write instead, by the expected type's name (the types themselves live in layers
# above this module, so they are named here, not imported).
_FIX = {
    "int": "pass a whole number, e.g. 8",
    "float": "pass a number, e.g. 1.5",
    "str": "pass a string, e.g. '1f1b'",
    "Pass": "use pb.Pass.F, Pass.B, Pass.W or Pass.BW (or Action.parse('0F3'))",
    "Schedule": "make one with pb.generate('1f1b', 4, 8) or pb.Schedule(spec, programs)",
    "PipelineSpec": "make one with pb.PipelineSpec(num_ranks=4, num_microbatches=8)",
    "CostModel": "pass a cost model such as pb.UniformCosts(f=1, b=2, w=1)",
    "Action": "make one with pb.Action(0, pb.Pass.F, 3) or pb.Action.parse('0F3')",
    "tuple": "pass one sequence of Actions per rank (a tuple or list)",
}


def _name(kind: type) -> str:
    return getattr(kind, "__name__", str(kind))


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def expect(func: str, arg: str, value: Any, kind: type | tuple[type, ...], *,
           none: bool = False) -> None:
    """Raise ArgTypeError unless ``value`` is a ``kind`` (or None, with ``none=True``).

    ``func`` and ``arg`` name the call and the argument in the message.
    """
    if value is None and none:
        return
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return
    wanted = " or ".join(f"{_article(_name(k))} {_name(k)}" for k in kinds)
    if none:
        wanted += " or None"
    got = type(value).__name__
    fix = _FIX.get(_name(kinds[0]), f"pass {wanted}")
    if kinds[0] is int and isinstance(value, str) and value.strip().isdecimal():
        fix += f" or int({value!r})"
    shown = repr(value)  # a long repr (a whole object) says less than its type alone
    given = f"{shown}, {_article(got)} {got}" if len(shown) <= 40 else f"{_article(got)} {got}"
    raise ArgTypeError(
        f"{func}(): {arg} must be {wanted} (got {given}); {fix}",
        function=func, argument=arg, expected=wanted, got=got,
    )


def require(module: str, feature: str) -> None:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``feature`` and the
    extra to install (:data:`EXTRAS`). Called before the work starts, so that nothing is
    computed only to fail at the end.

        >>> require("json", "reading JSON")  # installed: nothing happens

    Without matplotlib, ``require("matplotlib", "pipeblocks draw")`` raises "pipeblocks draw
    needs matplotlib, which is not installed; install it with pip install 'pipeblocks[plot]'".
    """
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(feature, module, EXTRAS.get(module, module)) from None
