"""Checkpoints: each rank saves its stages' weights and optimizer state; resuming is exact.

A checkpoint is written with :mod:`torch.distributed.checkpoint` (DCP): every rank writes the
tensors of the stages it holds, under keys named by the *global* stage
(``stage3.model.blocks.0.ln1.weight``, ``stage3.optim.blocks.0.ln1.weight.exp_avg``), so any
schedule whose stages are the same model chunks can load it, whatever rank holds which stage:
1F1B on 4 ranks, v-half on 2 (4 stages, V placement) and interleaved 1F1B on 2 (4 stages,
loop) share one layout. A different layout (stage count, blocks per stage, model sizes) is
refused before any communication. Beside the tensors, ``pipeblocks.json`` (the manifest,
:mod:`pipeblocks.runtime.manifest`) holds the step, the layout, the run, the options that
change the data or the math, and a SHA-256 of every file, verified before a resume.

A folder of checkpoints::

    DIR/latest                    the name of the newest complete checkpoint
    DIR/step-00000010/            a complete checkpoint (DCP files and pipeblocks.json)
    DIR/.tmp-step-00000012/       one being written: never read, removed by the next save

A checkpoint is written under the temporary name and renamed when every rank has written and
synced its files, then ``latest`` is replaced (write, sync, rename): a process killed at any
moment leaves the previous checkpoint intact and named by ``latest``. The newest ``keep``
complete checkpoints *of the same run* (by their own step, never the one just written) are
kept; another run's checkpoints in the folder are never pruned.

Loading unpickles nothing but DCP's own metadata classes: tensors are read by DCP with
``torch.load(weights_only=True)``, and its ``.metadata`` file (a pickle) through an unpickler
that refuses every other global.

    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> net = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.Adam(net.parameters())
    >>> net(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> path = save(folder, 1, {0: net}, opt, layout=[1], model={"kind": "linear"})
    >>> info = find(folder)
    >>> info.step, info.path.name, info.layout
    (1, 'step-00000001', (1,))
    >>> fresh = torch.nn.Linear(2, 2)
    >>> load(info, {0: fresh}, torch.optim.Adam(fresh.parameters()))
    1
    >>> torch.equal(fresh.weight, net.weight)
    True
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from pipeblocks.errors import SpecError
from pipeblocks.runtime.faults import Guard, RankFailure
from pipeblocks.runtime.manifest import (
    FORMAT,
    LATEST,
    META,
    PREFIX,
    TMP,
    CheckpointError,
    CheckpointInfo,
    check_compatible,
    check_options,
    complete,
    digests,
    find,
    manifest,
    verify,
)

__all__ = ["CheckpointInfo", "CheckpointError", "save", "find", "verify", "load",
           "check_compatible", "check_options", "read_tensors", "META", "FORMAT"]

log = logging.getLogger(__name__)

# --- saving -----------------------------------------------------------------------------------

def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _aliases(stages: Mapping[int, nn.Module]) -> dict[tuple[int, str], tuple[int, str]]:
    """(stage, name) of every tied copy but the first -> the first copy's (stage, name).

    A tied weight (:mod:`pipeblocks.runtime.ties`, recorded on the stages by ``split``) is
    stored once, under its first copy's key; every copy, on any rank, loads from that key."""
    out: dict[tuple[int, str], tuple[int, str]] = {}
    for module in stages.values():
        for tie in getattr(module, "pipeblocks_ties", ()):
            first = min(tie)
            out.update({copy: first for copy in tie if copy != first})
    return out


def _param_names(stages: Mapping[int, nn.Module]) -> dict[int, tuple[int, str]]:
    """id(parameter) -> the (stage, name) it is stored under (a tied copy: the first's)."""
    aliases = _aliases(stages)
    out: dict[int, tuple[int, str]] = {}
    for s, module in sorted(stages.items()):
        for name, p in module.named_parameters():
            out.setdefault(id(p), aliases.get((s, name), (s, name)))
    return out


def _model_state(stages: Mapping[int, nn.Module], *, saving: bool = False,
                 copies: list[tuple[torch.Tensor, str]] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Weights and buffers by global key; the tensors share storage with the modules. Saving
    leaves out the tied copies but the first; loading reads them from the first's key (a
    second copy on this rank goes to ``copies``, as (tensor, key), to be filled after)."""
    aliases = _aliases(stages)
    out: dict[str, torch.Tensor] = {}
    for s, module in sorted(stages.items()):
        for k, v in module.state_dict().items():
            first = aliases.get((s, k))
            if first is None:
                out[f"stage{s}.model.{k}"] = v
            elif not saving:
                key = f"stage{first[0]}.model.{first[1]}"
                if key not in out:
                    out[key] = v
                elif copies is not None and out[key] is not v:
                    copies.append((v, key))
    return out


def _optim_state(stages: Mapping[int, nn.Module],
                 optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    if optimizer is None:
        return {}
    names = _param_names(stages)
    aliases = _aliases(stages)
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in names and names[id(p)] in aliases.values() and not _holds(
                    stages, p, names[id(p)]):
                continue  # a tied copy whose first copy is on another rank: stored there
            if id(p) not in names:
                raise SpecError("the optimizer holds a parameter of no stage on this rank; "
                                "build it from the stages' parameters")
            s, name = names[id(p)]
            for k, v in optimizer.state.get(p, {}).items():
                if not isinstance(v, torch.Tensor):
                    raise SpecError(f"optimizer state {k!r} of {name} is a {type(v).__name__}, "
                                    f"not a tensor; pipeblocks checkpoints hold tensors only")
                out[f"stage{s}.optim.{name}.{k}"] = v
    return out


def _holds(stages: Mapping[int, nn.Module], p: nn.Parameter, key: tuple[int, str]) -> bool:
    """Whether ``p`` is the parameter stored under ``key`` on this rank (its stage is here)."""
    s, name = key
    return s in stages and dict(stages[s].named_parameters()).get(name) is p


@contextlib.contextmanager
def _collective(what: str, guard: Guard | None, fix: str = "") -> Iterator[None]:
    """Run DCP calls and barriers so that a failure stops every rank naming its root cause.

    DCP reports a rank's own failure to every rank as a CheckpointException (a BaseException,
    which would escape the callers' handlers with a traceback per rank): it becomes a
    RankFailure naming that rank, posted to ``guard``. Any other exception is the transport
    failing, most likely because a peer died: as the executor does, wait up to 2 s for the
    root cause the launcher posts before posting this rank's own.
    """
    rank = _rank()
    try:
        with _quiet():
            yield
    except CheckpointException as e:
        ranks = sorted(e.failures)
        exc = e.failures[ranks[0]][0] if ranks else e
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks}"
        msg = f"{who} failed in {what}: {_detail(exc)}{fix}"
        raise RankFailure(guard.fail(msg) if guard is not None else msg) from None
    except Exception as e:
        msg = f"rank {rank} failed in {what}: {_detail(e)}"
        if guard is None:
            raise RankFailure(msg) from None
        cause = guard.root_cause(msg)
        guard.stand_down()
        raise RankFailure(cause if cause == msg else f"rank {rank} stops in {what}: {cause}") \
            from None


def _detail(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without a process group DCP warns that it assumes one process: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old content or the new, whole."""
    tmp = path.with_name(f"{TMP}{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    folder: str | os.PathLike[str],
    step: int,
    stages: Mapping[int, nn.Module],
    optimizer: torch.optim.Optimizer | None,
    *,
    layout: Sequence[int],
    model: Mapping[str, Any],
    schedule: str = "",
    run: str = "",
    options: Mapping[str, Any] | None = None,
    keep: int = 2,
    guard: Guard | None = None,
) -> Path:
    """Save this rank's ``stages`` (global stage -> module) and ``optimizer`` after ``step``.

    Collective: every rank of the process group calls it with its own stages. ``layout`` (parts
    per stage) and ``model`` (a JSON-able description of the model's sizes) are what a resume
    must match; ``run`` names the run (pruning keeps its newest ``keep`` and touches no other
    run's) and ``options`` the values that change the data or the math (a resume must match
    them). A rank that fails to write stops every rank (through ``guard``) with a
    :class:`RankFailure` naming it. Returns the complete checkpoint's folder.
    """
    root = Path(folder)
    name = f"{PREFIX}{step:08d}"
    final, tmp = root / name, root / f"{TMP}{name}"
    rank = _rank()
    what = f"saving the checkpoint of step {step}"
    state = {**_model_state(stages, saving=True), **_optim_state(stages, optimizer)}
    with _collective(what, guard):
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        _barrier()
        # returns when every rank's files are written and synced
        dcp.save(state, storage_writer=FileSystemWriter(tmp, sync_files=True),
                 no_dist=not dist.is_initialized())
    if rank == 0:
        meta = manifest(step, layout, model, schedule=schedule, run=run, options=options,
                        files=digests(tmp))  # every rank's files are synced (dcp.save)
        _write_atomic(tmp / META, json.dumps(meta, indent=1) + "\n")
        _sync_dir(tmp)
        old = root / f"{TMP}old-{name}"
        if final.exists():  # the same step saved again (a resumed run): swap, then drop
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _write_atomic(root / LATEST, name + "\n")
        _sync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
        _prune(root, final, run, keep)
        log.info("saved %s", final)
    with _collective(what, guard):
        _barrier()
    return final


def _prune(root: Path, final: Path, run: str, keep: int) -> None:
    """Keep ``final`` and the newest ``keep - 1`` other checkpoints of ``run`` (by step)."""
    if keep <= 0:
        return
    ours = [i.path for i in complete(root) if i.run == run and i.path != final]
    for stale in ours[:max(len(ours) - (keep - 1), 0)]:
        shutil.rmtree(stale, ignore_errors=True)


# --- loading ----------------------------------------------------------------------------------

# The globals DCP's .metadata pickle may name; anything else is refused unread.
_SAFE_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _SAFE_GLOBALS.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"checkpoint metadata names {module}.{name}, which pipeblocks does not load")


class _SafeReader(FileSystemReader):
    """DCP's file reader with a restricted unpickler for the .metadata file."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        with open(self._get_metadata_path(rank), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError("checkpoint metadata is not DCP metadata")
        from torch.distributed.checkpoint.metadata import StorageMeta

        storage = getattr(metadata, "storage_meta", None)
        if storage is None:
            storage = metadata.storage_meta = StorageMeta()
        storage.load_id = self.load_id
        return metadata


def load(info: CheckpointInfo, stages: Mapping[int, nn.Module],
         optimizer: torch.optim.Optimizer | None, guard: Guard | None = None) -> int:
    """Load this rank's ``stages`` (in place) and ``optimizer`` state from ``info``; return the
    step it was saved after. Collective: every rank calls it with its own stages; a rank that
    cannot read its part (a damaged file) stops every rank, as in :func:`save`."""
    reader = _SafeReader(info.path)
    try:
        saved = reader.read_metadata().state_dict_metadata
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"--resume {info.path}: cannot read the checkpoint ({e}); it is "
                              f"damaged: resume from an earlier one or start afresh") from None
    copies: list[tuple[torch.Tensor, str]] = []
    model = _model_state(stages, copies=copies)
    for key, tensor in model.items():
        meta = saved.get(key)
        if not isinstance(meta, TensorStorageMetadata) or tuple(meta.size) != tuple(tensor.shape):
            got = "missing" if meta is None else f"of shape {tuple(getattr(meta, 'size', ()))}"
            raise CheckpointError(f"--resume {info.path}: {key} is {got} in the checkpoint, "
                                  f"this run has shape {tuple(tensor.shape)}, as its manifest "
                                  f"says: the checkpoint is damaged or of another model; "
                                  f"resume from another one or start afresh")
    index: dict[int, int] = {}
    names = _param_names(stages)
    optim: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                index[id(p)] = len(index)  # the numbering optimizer.state_dict() uses
        wanted = {f"stage{names[id(p)][0]}.optim.{names[id(p)][1]}.": p
                  for group in optimizer.param_groups for p in group["params"]}
        for key, meta in saved.items():
            head = key[:key.rfind(".") + 1]
            if head in wanted and isinstance(meta, TensorStorageMetadata):
                optim[key] = _template(meta, wanted[head])
    with _collective(f"loading the checkpoint {info.path}", guard,
                     "; the checkpoint is damaged: resume from an earlier one or start afresh"):
        dcp.load({**model, **optim}, storage_reader=reader, no_dist=not dist.is_initialized())
    with torch.no_grad():
        for tensor, key in copies:  # a second copy of a tied weight on this rank
            tensor.copy_(model[key])
    if optimizer is not None:
        by_head: dict[str, list[int]] = {}
        for pid, (s, n) in names.items():
            by_head.setdefault(f"stage{s}.optim.{n}.", []).append(pid)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in optim.items():
            head, k = key[:key.rfind(".") + 1], key[key.rfind(".") + 1:]
            for pid in by_head[head]:
                if pid in index:
                    state.setdefault(index[pid], {})[k] = tensor.clone()
        packed = optimizer.state_dict()
        optimizer.load_state_dict({"state": state, "param_groups": packed["param_groups"]})
    return info.step


def _template(meta: TensorStorageMetadata, param: torch.Tensor) -> torch.Tensor:
    """Where DCP loads one optimizer state tensor: sharded like its parameter when that is a
    DTensor of the same shape (FSDP2: DCP reshards it), else a plain tensor."""
    size = tuple(meta.size)
    if hasattr(param, "device_mesh") and size == tuple(param.shape):
        return torch.empty_like(param, dtype=meta.properties.dtype)
    return torch.empty(size, dtype=meta.properties.dtype)


def read_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at ``path``, read in this process (to inspect or compare
    checkpoints; no process group needed)."""
    info = find(path)
    reader = _SafeReader(info.path)
    out = {key: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
           for key, meta in reader.read_metadata().state_dict_metadata.items()
           if isinstance(meta, TensorStorageMetadata)}
    with _quiet():
        dcp.load(out, storage_reader=reader, no_dist=True)
    return out
