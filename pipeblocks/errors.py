"""The exceptions pipeblocks raises.

Every message names the rule that was broken, the values that broke it and a fix::

    >>> from pipeblocks.errors import SpecError
    >>> raise SpecError("num_ranks must be >= 1 (got 0); use -p 1 or more")
    Traceback (most recent call last):
    ...
    pipeblocks.errors.SpecError: num_ranks must be >= 1 (got 0); use -p 1 or more
"""

from __future__ import annotations

__all__ = [
    "PipeblocksError",
    "SpecError",
    "ScheduleError",
    "DeadlockError",
    "FormatError",
    "CollisionError",
    "ArgTypeError",
    "MissingDependencyError",
    "OutputError",
]


class PipeblocksError(Exception):
    """Base class of every error pipeblocks raises on purpose."""


class SpecError(PipeblocksError, ValueError):
    """A pipeline spec, cost model or option is not acceptable (bad sizes, unmet constraint)."""


class ScheduleError(PipeblocksError):
    """A schedule breaks a rule: a missing or duplicated pass, a wrong rank, an unmet dependency.

    ``rule`` names the rule, ``rank`` and ``position`` locate the bad action in its rank's
    program (either may be None when the rule concerns the whole schedule) and ``grid`` is an
    ASCII picture with the bad cell marked, appended to the message.
    """

    def __init__(
        self,
        message: str,
        *,
        rule: str = "",
        rank: int | None = None,
        position: int | None = None,
        grid: str = "",
    ) -> None:
        self.rule = rule
        self.rank = rank
        self.position = position
        self.grid = grid
        super().__init__(message + (f"\n{grid}" if grid else ""))

    @property
    def headline(self) -> str:
        """The first line of the message, without the grid."""
        return str(self).split("\n", 1)[0]


class DeadlockError(PipeblocksError):
    """Ranks wait on each other forever; ``blocked`` maps each stuck rank to its head action."""

    def __init__(self, message: str, *, blocked: dict[int, str] | None = None) -> None:
        self.blocked = dict(blocked or {})
        super().__init__(message)


class FormatError(PipeblocksError, ValueError):
    """A schedule or costs file cannot be read; names the file, line and column where known."""

    def __init__(
        self, message: str, *, path: str = "", line: int | None = None, column: int | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        where = path or "<input>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class CollisionError(ScheduleError):
    """Two passes of a repeated building block land on the same rank at the same slot."""


class ArgTypeError(PipeblocksError, TypeError):
    """A public function got an argument of the wrong type (see :mod:`pipeblocks.checks`).

    ``function``, ``argument``, ``expected`` and ``got`` (the given value's type name) say which.
    """

    def __init__(
        self, message: str, *, function: str = "", argument: str = "", expected: str = "",
        got: str = "",
    ) -> None:
        self.function = function
        self.argument = argument
        self.expected = expected
        self.got = got
        super().__init__(message)


class MissingDependencyError(PipeblocksError, ImportError):
    """An optional dependency is not installed; ``extra`` names the pipeblocks extra to install.

        >>> str(MissingDependencyError("drawing a picture", "matplotlib", "plot"))
        "drawing a picture needs matplotlib, which is not installed; install it with pip install 'pipeblocks[plot]'"
    """

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.feature = feature
        self.module = module
        self.extra = extra
        super().__init__(
            f"{feature} needs {module}, which is not installed; install it with "
            f"pip install 'pipeblocks[{extra}]'"
        )


class OutputError(PipeblocksError):
    """A result cannot be written: its folder is missing, the path is a folder, the write failed."""
