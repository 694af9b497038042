"""Schedule files: PyTorch's compute-only CSV, our JSON, and the ASCII grid (write-only).

=============  ===========  ==========================================================
format         extension    module
=============  ===========  ==========================================================
``torch-csv``  ``.csv``     :mod:`~pipeblocks.ir.formats.torch_csv` (PyTorch letters)
``json``       ``.json``    :mod:`~pipeblocks.ir.formats.json_io` (spec + programs)
``ascii``      ``.txt``     :func:`pipeblocks.ir.grid` (for people; not read back)
=============  ===========  ==========================================================

:func:`load` takes a path or the text itself and finds the format from the extension, else
from the content (a ``{`` or ``[`` first means JSON). Every problem with the input is a
:class:`~pipeblocks.errors.FormatError` with the line and column; a wrong option is a
:class:`~pipeblocks.errors.SpecError`. Round trips are exact: ``loads(dumps(s, f)) == s``.

    >>> from pipeblocks.generators import generate
    >>> s = generate("gpipe", num_ranks=2, num_microbatches=2)
    >>> print(dumps(s, "torch-csv"), end="")
    0F0,0F1,0B0,0B1
    1F0,1F1,1B0,1B1
    >>> load(dumps(s, "json")) == s
    True
    >>> load("0F0,0X1\\n")
    Traceback (most recent call last):
    ...
    pipeblocks.errors.FormatError: <input>:1:5: cell '0X1' is not <stage><letter><microbatch> ...
"""

from __future__ import annotations

import os
from typing import Any

from pipeblocks.errors import FormatError, SpecError
from pipeblocks.ir.ascii import grid
from pipeblocks.ir.formats import json_io, torch_csv
from pipeblocks.ir.formats._text import read_text
from pipeblocks.ir.schedule import Schedule

__all__ = ["FORMATS", "READABLE", "EXTENSIONS", "detect", "dumps", "dump", "loads", "load"]

FORMATS = ("torch-csv", "json", "ascii")
READABLE = ("torch-csv", "json")
EXTENSIONS = {".csv": "torch-csv", ".json": "json", ".txt": "ascii"}
_CSV_OPTIONS = ("placement", "stages_per_rank", "num_microbatches")

Source = str | os.PathLike[str]


def _check(format: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if format not in allowed:
        extra = " (ascii grids are for people and are not read back)" if format == "ascii" else ""
        raise SpecError(f"unknown or unsupported format {format!r}{extra}; use one of: "
                        f"{', '.join(allowed)}")
    return format


def detect(text: str | None = None, path: Source | None = None) -> str:
    """The format of a file: by its extension, else by its content (``{`` or ``[``: JSON)."""
    if path is not None:
        ext = os.path.splitext(os.fspath(path))[1].lower()
        if ext in EXTENSIONS:
            return EXTENSIONS[ext]
    if text is not None and text.lstrip()[:1] in ("{", "["):
        return "json"
    return "torch-csv"


def dumps(schedule: Schedule, format: str) -> str:
    """The schedule as text in ``format`` (one of :data:`FORMATS`), ending with a newline."""
    _check(format)
    if format == "torch-csv":
        return torch_csv.dumps(schedule)
    if format == "json":
        return json_io.dumps(schedule)
    return grid(schedule) + "\n"


def dump(schedule: Schedule, path: Source, format: str | None = None) -> None:
    """Write the schedule to ``path``; the format defaults to the extension's."""
    if format is None:
        ext = os.path.splitext(os.fspath(path))[1].lower()
        if ext not in EXTENSIONS:
            raise SpecError(f"cannot tell the format of {os.fspath(path)!r} from its extension; "
                            f"use .csv, .json or .txt, or pass format=")
        format = EXTENSIONS[ext]
    text = dumps(schedule, format)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def loads(text: str, format: str | None = None, *, path: str = "", **options: Any) -> Schedule:
    """Read a schedule from ``text``. ``options``: ``name=``, and for torch-csv ``placement``,
    ``stages_per_rank``, ``num_microbatches`` (a JSON file holds its spec: there they must
    agree with it)."""
    if not isinstance(text, str):
        raise FormatError(f"expected text, got {type(text).__name__}", path=path)
    fmt = _check(format, READABLE) if format is not None else detect(text, path or None)
    if fmt == "ascii":
        _check(fmt, READABLE)
    unknown = sorted(set(options) - set(_CSV_OPTIONS) - {"name"})
    if unknown:
        raise SpecError(f"unknown option {unknown[0]!r}; known: name, {', '.join(_CSV_OPTIONS)}")
    if fmt == "json":
        schedule = json_io.loads(text, name=options.get("name"), path=path)
        _agree(schedule, options, path)
        return schedule
    return torch_csv.loads(text, path=path, **options)


def _agree(schedule: Schedule, options: dict[str, Any], path: str) -> None:
    """A JSON file holds its own spec: options may repeat it, not change it."""
    spec = schedule.spec
    have = {"placement": spec.placement.value, "stages_per_rank": spec.stages_per_rank,
            "num_microbatches": spec.num_microbatches}
    for k in _CSV_OPTIONS:
        given = options.get(k)
        given = getattr(given, "value", given)  # a Placement counts as its name
        if given is not None and given != have[k]:
            raise SpecError(f"{k}={given} disagrees with {path or 'the JSON input'}, whose spec "
                            f"says {k}={have[k]}; drop the option: a JSON file sets its own spec")


def load(source: Source, format: str | None = None, **options: Any) -> Schedule:
    """Read a schedule from a path or from the text itself (see the module doc).

    A ``str`` is a path when it holds no newline, does not start with ``{`` and names an
    existing file or ends in a known extension; anything else is read as the text.
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _is_path(source)):
        name = os.fspath(source)
        text = read_text(name)
        fmt = format if format is not None else detect(text, name)
        if fmt == "torch-csv":
            options.setdefault("name", os.path.basename(name))
        return loads(text, fmt, path=name, **options)
    if not isinstance(source, str):
        raise FormatError(f"expected a path or text, got {type(source).__name__}")
    return loads(source, format, **options)


def _is_path(text: str) -> bool:
    if "\n" in text or text.lstrip().startswith("{") or not text.strip():
        return False
    return os.path.isfile(text) or os.path.splitext(text)[1].lower() in EXTENSIONS
