"""Passes and actions: the cells of a schedule.

An :class:`Action` is one pass of one stage on one microbatch. Its text form is
``<stage><letter><mb>`` with our letters ``F``, ``B`` (input gradient), ``W`` (weight gradient)
and ``BW`` (fused backward)::

    >>> a = Action.parse("3B5")
    >>> a.stage, a.kind, a.mb
    (3, <Pass.B: 'B'>, 5)
    >>> str(Action(0, Pass.BW, 2))
    '0BW2'
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError

__all__ = ["Pass", "Action"]


class Pass(enum.Enum):
    """The kind of a pass. B is the gradient w.r.t. the stage's inputs, W w.r.t. its weights."""

    F = "F"
    B = "B"
    W = "W"
    BW = "BW"

    @classmethod
    def _missing_(cls, value: object) -> Pass:
        # Pass("X") is a SpecError naming the letters, not a bare ValueError.
        raise SpecError(f"unknown pass {value!r}; use one of: F, B, W, BW (our letters)")

    @property
    def frees_input_grad(self) -> bool:
        """True for the passes that produce the gradient sent to the previous stage (B, BW)."""
        return self in (Pass.B, Pass.BW)


# ASCII digits only, as the file readers take them: ``\d`` would also match other scripts'
# digits ('٣F٥'), which int() reads. At most 18 each, also as the readers (ir.formats._text):
# int() refuses more than 4300 digits with a bare ValueError.
_ACTION_RE = re.compile(r"^([0-9]{1,18})(BW|F|B|W)([0-9]{1,18})$")


_set = object.__setattr__  # how a frozen dataclass sets its own fields


@dataclass(frozen=True, slots=True, order=True)
class Action:
    """One pass (``kind``) of global stage ``stage`` on microbatch ``mb``."""

    stage: int
    kind: Pass
    mb: int

    def __init__(self, stage: int, kind: Pass, mb: int) -> None:
        # Written out rather than generated + __post_init__: actions are made by the hundred
        # thousand, and this costs what the generated __init__ did (a __post_init__ call adds
        # about 20%). The careful check, which names the argument, runs only when a fast
        # type() test fails.
        if type(stage) is not int or type(kind) is not Pass or type(mb) is not int:
            expect("Action", "stage", stage, int)
            expect("Action", "kind", kind, Pass)
            expect("Action", "mb", mb, int)
        _set(self, "stage", stage)
        _set(self, "kind", kind)
        _set(self, "mb", mb)

    def __str__(self) -> str:
        return f"{self.stage}{self.kind.value}{self.mb}"

    def short(self, with_stage: bool = True) -> str:
        """Cell text for grids: ``3F5`` or, where the rank holds one stage, ``F5``."""
        return str(self) if with_stage else f"{self.kind.value}{self.mb}"

    @classmethod
    def parse(cls, text: str) -> Action:
        """Read ``<stage><letter><mb>`` (our letters F, B, W, BW; ASCII digits)."""
        expect("Action.parse", "text", text, str)
        m = _ACTION_RE.match(text.strip())
        if not m:
            raise SpecError(
                f"action {text[:40]!r} is not <stage><F|B|W|BW><microbatch> (ASCII digits, at "
                f"most 18 each); write e.g. '0F3' or '2BW1'"
            )
        return cls(int(m.group(1)), Pass(m.group(2)), int(m.group(3)))
