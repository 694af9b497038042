"""Helpers shared by the readers: file reading, offsets to line:column, strict integers.

    >>> line_col("ab\\ncd", 4)
    (2, 2)
"""

from __future__ import annotations

import os

from pipeblocks.errors import FormatError

__all__ = ["line_col", "read_text", "MAX_DIGITS"]

# Indices longer than this are rejected before int() runs: no real pipeline has 10**18 stages,
# and Python refuses to convert numbers of more than 4300 digits with a ValueError.
MAX_DIGITS = 18


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text`` (the convention of json's errors)."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text (UTF-8, a leading BOM dropped); any failure is a FormatError."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FormatError(f"cannot read the file: {e.strerror or e}", path=name) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        head = data[: e.start]
        line = head.count(b"\n") + 1
        column = len(head[head.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise FormatError(
            f"byte 0x{data[e.start]:02x} is not UTF-8; save the file as UTF-8 text",
            path=name, line=line, column=column,
        ) from None
