"""Where a value sits in JSON text, for error messages that point at line and column.

:mod:`json` parses fast but forgets positions; when a document parsed yet breaks the schema,
:func:`locate` walks the text again along the path of the bad value (keys and indices) and
returns its offset. It only runs on text that :func:`json.loads` accepted.

    >>> text = '{"a": [1, {"b": true}]}'
    >>> text[locate(text, ("a", 1, "b")):]
    'true}]}'
"""

from __future__ import annotations

import json
import re

__all__ = ["Path", "locate", "too_deep"]

Path = tuple[str | int, ...]

_WS = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r'[^\s,:\[\]{}"]*')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _string(text: str, i: int) -> tuple[str, int]:
    """The JSON string starting at ``i`` (its opening quote) and the offset past it."""
    m = _STRING.match(text, i)
    if m is None:
        raise ValueError("not a string")
    return json.loads(m.group()), m.end()


def _ws(text: str, i: int) -> int:
    """Offset of the first non-blank character at or after ``i``."""
    m = _WS.match(text, i)
    return m.end() if m else i


def _skip_value(text: str, i: int) -> int:
    """Offset just past the JSON value starting at ``i`` (text is known to be valid JSON)."""
    depth = 0
    while True:
        i = _ws(text, i)
        c = text[i]
        if c == '"':
            i = _string(text, i)[1]
        elif c in "[{":
            depth += 1
            i += 1
            continue
        elif c in "]}":
            depth -= 1
            i += 1
        elif c in ",:":
            i += 1
            continue
        else:
            m = _SCALAR.match(text, i)
            i = m.end() if m and m.end() > i else i + 1
        if depth == 0:
            return i


def locate(text: str, path: Path, *, last: bool = False) -> int:
    """Offset of the value at ``path`` (keys and indices) in valid JSON ``text``; with
    ``last``, of the last value under the final key when the key repeats.

    Best effort: where the walk cannot go on it returns the deepest offset reached.
    """
    i = _ws(text, 0)
    try:
        for n, step in enumerate(path):
            j = _ws(text, i + 1)  # the first key or item after the opening bracket
            if isinstance(step, str):
                found = None
                while text[j] == '"':
                    k, j = _string(text, j)
                    j = _ws(text, _ws(text, j) + 1)  # past the colon
                    if k == step:
                        found = j
                        if not (last and n == len(path) - 1):
                            break
                    j = _ws(text, _skip_value(text, j))
                    j = _ws(text, j + 1) if text[j] == "," else j
                if found is None:
                    return i
                j = found
            else:
                for _ in range(step):
                    j = _ws(text, _skip_value(text, j))
                    j = _ws(text, j + 1)  # past the comma
            i = j
    except (IndexError, ValueError):
        pass
    return i


def too_deep(text: str, limit: int = 64) -> int:
    """Offset of the first bracket nested deeper than ``limit`` (strings skipped)."""
    depth = 0
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > limit:
                return m.start()
        elif tok in "]}":
            depth -= 1
    return 0
