"""Checkpoint manifests: ``pipeblocks.json`` read, checked and verified; no tensors, no torch.

Every checkpoint folder holds, beside DCP's files, a manifest written last (its presence
marks the checkpoint complete): the step, the stage layout and model sizes a resume must
match, the run it belongs to, the options that change the data or the math (``seed``,
``batch`` sequences per step, ``lr``), and the SHA-256 of every other file in the folder.

- A checkpoint is found by :func:`find` (a checkpoint folder, or a folder of them: the one
  ``latest`` names). A ``latest`` that is not text, or names no complete checkpoint, is
  refused rather than guessed around: guessing is how a resume continued another run.
- :func:`verify` recomputes the checksums; a mismatch names the file (nothing is trained).
- Damage (an unreadable manifest, a bad checksum, a missing file) raises
  :class:`CheckpointError` (exit 1); options that do not match the checkpoint raise
  ``SpecError`` (exit 2: a usage error, fixed on the command line).

    >>> import json, pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "step-00000003"
    >>> folder.mkdir()
    >>> _ = (folder / "__0_0.distcp").write_bytes(b"tensors")
    >>> meta = manifest(3, [2, 2], {"dim": 8}, run="r1", options={"seed": 0},
    ...                 files=digests(folder))
    >>> _ = (folder / META).write_text(json.dumps(meta))
    >>> info = find(folder)
    >>> info.step, info.run, verify(info)
    (3, 'r1', None)
    >>> _ = (folder / "__0_0.distcp").write_bytes(b"tensorz")
    >>> verify(info)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pipeblocks.runtime.manifest.CheckpointError: --resume .../step-00000003: __0_0.distcp does not match its checksum ...
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeblocks.errors import PipeblocksError, SpecError

__all__ = ["CheckpointError", "CheckpointInfo", "FORMAT", "META", "manifest", "digests",
           "read_info", "complete", "find", "verify", "check_compatible", "check_options"]

log = logging.getLogger(__name__)

FORMAT = "pipeblocks-checkpoint"
VERSION = 2  # 2: run, options, files (checksums); 1 had none of them (still read)
META = "pipeblocks.json"
LATEST = "latest"
PREFIX = "step-"
TMP = ".tmp-"


class CheckpointError(PipeblocksError):
    """A checkpoint cannot be used as it is on disk: missing, unreadable or damaged (exit 1)."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A complete checkpoint on disk: where, after which step, and what a resume must match."""

    path: Path
    step: int
    num_stages: int
    layout: tuple[int, ...]
    model: dict[str, Any]
    schedule: str
    run: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 (empty: version 1)


def manifest(step: int, layout: Sequence[int], model: Mapping[str, Any], *, schedule: str = "",
             run: str = "", options: Mapping[str, Any] | None = None,
             files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The manifest's JSON object."""
    return {"format": FORMAT, "version": VERSION, "step": step, "num_stages": len(layout),
            "layout": list(layout), "model": dict(model), "schedule": schedule, "run": run,
            "options": dict(options or {}), "files": dict(files or {})}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` but the manifest, by name."""
    return {p.name: _sha256(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != META}


def read_info(folder: Path) -> CheckpointInfo:
    """The manifest of the checkpoint in ``folder``; :class:`CheckpointError` if unreadable."""
    try:
        meta = json.loads((folder / META).read_bytes().decode())
        if meta.get("format") != FORMAT or meta.get("version") not in (1, VERSION):
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        return CheckpointInfo(
            folder, int(meta["step"]), int(meta["num_stages"]),
            tuple(int(x) for x in meta["layout"]), dict(meta["model"]),
            str(meta.get("schedule", "")), str(meta.get("run", "")),
            dict(meta.get("options", {})), {str(k): str(v) for k, v in
                                            dict(meta.get("files", {})).items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"--resume {folder}: {META} is not a pipeblocks checkpoint's "
                              f"({type(e).__name__}: {str(e)[:200]}); resume from another "
                              f"checkpoint or start afresh") from None


def complete(root: Path) -> list[CheckpointInfo]:
    """The complete, readable checkpoints in ``root``, oldest first by their own step."""
    found = []
    for p in root.glob(f"{PREFIX}*"):
        if p.is_dir() and (p / META).is_file():
            try:
                found.append(read_info(p))
            except CheckpointError:
                log.warning("ignoring %s: its %s is unreadable", p, META)
    return sorted(found, key=lambda i: (i.step, i.path.name))


def find(path: str | os.PathLike[str]) -> CheckpointInfo:
    """The checkpoint at ``path``: a checkpoint folder itself, or a folder of them (then the
    one ``latest`` names, or the only complete one). Reads files only (no communication)."""
    root = Path(path)
    if (root / META).is_file():
        return read_info(root)
    if not root.is_dir():
        raise CheckpointError(f"--resume {root}: no such folder; give the --save folder of an "
                              f"earlier run")
    found = complete(root)
    latest = root / LATEST
    if not latest.is_file():
        if not found:
            raise CheckpointError(f"--resume {root}: no complete checkpoint in it (a folder "
                                  f"holding {META}); start without --resume")
        if len({i.run for i in found}) == 1:
            return found[-1]  # one run's checkpoints: its newest
        raise CheckpointError(f"--resume {root}: {LATEST} is missing and the checkpoints are "
                              f"of several runs; name one, e.g. --resume {found[-1].path}")
    try:
        name = latest.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    named = root / name if name and "/" not in name and name not in (".", "..") else None
    if named is None or not (named / META).is_file():
        what = f"names {name!r}, which is no complete checkpoint" if name else "is not text"
        some = f", e.g. --resume {found[-1].path}" if found else ""
        raise CheckpointError(f"--resume {root}: {latest} {what}; the folder is damaged: name "
                              f"a checkpoint folder directly{some}, or start afresh")
    return read_info(named)


def verify(info: CheckpointInfo) -> None:
    """Recompute every file's checksum; :class:`CheckpointError` names the first that differs."""
    if not info.files:
        log.warning("%s has no checksums (a version 1 checkpoint): not verified", info.path)
        return
    for name, want in sorted(info.files.items()):
        path = info.path / name
        if not path.is_file():
            problem = "is missing"
        elif (got := _sha256(path)) != want:
            problem = f"does not match its checksum (sha256 {got[:12]}..., saved {want[:12]}...)"
        else:
            continue
        raise CheckpointError(f"--resume {info.path}: {name} {problem}: the checkpoint is "
                              f"damaged; resume from an earlier one or start afresh")


def check_compatible(info: CheckpointInfo, layout: Sequence[int],
                     model: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose stages are not this run's model chunks.

    A schedule only changes the order of the passes, so any schedule with the same stage count,
    parts per stage and model sizes may resume it; anything else cannot map its tensors.
    """
    if (info.num_stages, info.layout, info.model) == (len(layout), tuple(layout), dict(model)):
        return
    diffs = []
    if info.num_stages != len(layout):
        diffs.append(f"it has {info.num_stages} stages, this run {len(layout)}")
    elif info.layout != tuple(layout):
        diffs.append(f"its parts per stage are {','.join(map(str, info.layout))}, this run's "
                     f"{','.join(map(str, layout))}")
    for k in sorted(set(info.model) | set(model)):
        if info.model.get(k) != model.get(k):
            diffs.append(f"its model {k} is {info.model.get(k)}, this run's {model.get(k)}")
    raise SpecError(
        f"--resume {info.path}: the checkpoint's stage layout differs from this run's ("
        f"{'; '.join(diffs)}); resume with a schedule of {info.num_stages} stages (p * v = "
        f"{info.num_stages}) and the same model options, or start without --resume"
    )


def check_options(info: CheckpointInfo, options: Mapping[str, Any], flags: Mapping[str, str],
                  override: str) -> None:
    """Refuse a resume whose data or math options differ from the checkpoint's.

    ``flags`` names the command-line option of each key (for the message); ``override`` is the
    flag that accepts the change. Keys the checkpoint does not hold (version 1) are not checked.
    """
    diffs = [f"{flags.get(k, k)} {info.options[k]} then, {v} now" for k, v in options.items()
             if k in info.options and info.options[k] != v]
    if diffs:
        raise SpecError(f"--resume {info.path}: the run would continue with other data or math "
                        f"({'; '.join(diffs)}); use the checkpoint's values, or pass "
                        f"{override} to accept the change")
