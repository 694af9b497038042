"""Checkpoint manifests in one process: nothing lost, damage refused, the same data on resume.

Each checkpoint here is a real one, written by :func:`checkpoint.save` from the small GPT's
stages exactly as ``pipeblocks train`` builds them, so the command line (in this process, with
no rank started) judges it as it would a real run's: another run's folder, a flipped block, a
binary ``latest``, another ``--seed``, and the exit code of each (docs/runtime.md, "Exit codes").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fuzzkit import no_launch, run_cli

from pipeblocks.cli.train import build_parser, build_plan
from pipeblocks.runtime import checkpoint
from pipeblocks.runtime.checkpoint import CheckpointError, find, load, save, verify
from pipeblocks.runtime.finite import first_bad
from pipeblocks.runtime.split import split

pytestmark = pytest.mark.torch
BASE = ["--schedule", "1f1b", "--ranks", "2", "--microbatches", "2", "--dim", "16", "--seq",
        "8", "--vocab", "32", "--heads", "2", "--layers", "2", "--microbatch-size", "2"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save_as_train(folder: Path, step: int, run: str, *extra: str) -> Path:
    """Save the checkpoint ``pipeblocks train BASE extra --save folder`` would write after
    ``step`` (all stages from this one process; no optimizer state)."""
    plan = build_plan(build_parser().parse_args(BASE + list(extra)))
    parts = split(plan.model.build(), plan.schedule.spec.num_stages, plan.layout)
    return save(folder, step, dict(enumerate(parts)), None, layout=plan.layout,
                model=plan.model.describe(), schedule=plan.schedule.name, run=run,
                options=plan.data_options())


def _train(*args: str) -> tuple[int, str, list[list[str]]]:
    """``pipeblocks train BASE args`` in this process: (exit code, stderr, ranks started)."""
    with no_launch() as started:
        o = run_cli(["train", *BASE, *args])
    assert "Traceback" not in o.err
    assert o.code == 0 or len(o.err.strip().splitlines()) == 1, o.err
    return o.code, o.err, started


def _flip(path: Path, size: int = 4096) -> None:
    """Invert ``size`` bytes in the middle of the file."""
    data = bytearray(path.read_bytes())
    mid = max(len(data) // 2 - size // 2, 0)
    data[mid:mid + size] = bytes(b ^ 0xFF for b in data[mid:mid + size])
    path.write_bytes(bytes(data))


def test_a_save_never_deletes_what_it_just_wrote(tmp_path: Path) -> None:
    """A folder holds an older run's steps 10 and 11; a new run saves steps 1-3 (keep 2): its
    own newest two remain, ``latest`` names step 3, and the other run's are untouched."""
    for step in (10, 11):
        _save_as_train(tmp_path, step, "old")
    for step in (1, 2, 3):
        path = _save_as_train(tmp_path, step, "new")
        assert path.is_dir() and find(tmp_path).path == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest", "step-00000002", "step-00000003", "step-00000010", "step-00000011"]
    assert find(tmp_path).step == 3


def test_a_fresh_run_is_refused_in_another_runs_folder(tmp_path: Path) -> None:
    """``--save DIR`` where another run saved: exit 2, one line naming the folder and the ways
    on; ``--overwrite``, or ``--resume DIR`` (the same run), start the ranks."""
    _save_as_train(tmp_path, 4, "old")
    code, err, started = _train("--save", str(tmp_path))
    assert code == 2 and not started
    assert f"--save {tmp_path} holds checkpoints of another run" in err
    assert f"--resume {tmp_path}" in err and "--overwrite" in err
    code, _, started = _train("--save", str(tmp_path), "--overwrite")
    assert code == 0 and len(started) == 1
    code, _, started = _train("--save", str(tmp_path), "--resume", str(tmp_path), "--steps", "6")
    assert code == 0 and len(started) == 1


@pytest.mark.parametrize("victim", ["__0_0.distcp", ".metadata"])
def test_a_flipped_block_is_refused_naming_the_file(tmp_path: Path, victim: str) -> None:
    """4 KiB inverted in one file: ``--resume`` exits 1 with one line naming the file and its
    checksum, and no rank starts (nothing is trained)."""
    path = _save_as_train(tmp_path, 2, "r")
    verify(find(tmp_path))
    _flip(path / victim)
    code, err, started = _train("--resume", str(tmp_path), "--steps", "4")
    assert code == 1 and not started
    assert f"{victim} does not match its checksum" in err and "damaged" in err


def _damage_latest_binary(root: Path, ckpt: Path) -> None:
    (root / "latest").write_bytes(b"\xff\xfe\x00step\x80")


def _damage_latest_missing(root: Path, ckpt: Path) -> None:
    (root / "latest").write_text("step-00000099\n")


def _damage_manifest(root: Path, ckpt: Path) -> None:
    (ckpt / "pipeblocks.json").write_bytes(b"\x00{not json")


def _damage_metadata(root: Path, ckpt: Path) -> None:
    os.truncate(ckpt / ".metadata", 10)


def _damage_tensors(root: Path, ckpt: Path) -> None:
    os.truncate(ckpt / "__0_0.distcp", 100)


@pytest.mark.parametrize("damage", [_damage_latest_binary, _damage_latest_missing,
                                    _damage_manifest, _damage_metadata, _damage_tensors],
                         ids=["latest-binary", "latest-missing", "manifest", "metadata",
                              "tensors"])
def test_a_damaged_checkpoint_exits_1_whichever_file(tmp_path: Path, damage) -> None:
    """Whichever file is damaged (``latest`` binary or naming nothing, the manifest, DCP's
    metadata, a rank's tensors): exit 1 (invalid input), one line naming the folder."""
    ckpt = _save_as_train(tmp_path, 2, "r")
    damage(tmp_path, ckpt)
    with pytest.raises(CheckpointError):
        verify(find(tmp_path))
    code, err, started = _train("--resume", str(tmp_path), "--steps", "4")
    assert code == 1 and not started and str(tmp_path) in err, err


def test_latest_is_never_guessed_around(tmp_path: Path) -> None:
    """A binary ``latest`` says so and offers the newest checkpoint folder by name."""
    ckpt = _save_as_train(tmp_path, 2, "r")
    _damage_latest_binary(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match=rf"latest is not text; .* --resume {ckpt}"):
        find(tmp_path)


@pytest.mark.parametrize("change,said", [
    (["--seed", "7"], "--seed 0 then, 7 now"),
    (["--lr", "0.1"], "--lr 0.003 then, 0.1 now"),
    (["--microbatch-size", "3"], "the batch (--microbatches x --microbatch-size) 4 then, 6 now"),
], ids=["seed", "lr", "batch"])
def test_a_resume_that_changes_the_data_or_math_is_refused(tmp_path: Path, change: list[str],
                                                           said: str) -> None:
    """Another seed, learning rate or batch than the checkpoint's: exit 2 naming the old and
    new values; with ``--allow-changes`` the ranks start."""
    _save_as_train(tmp_path, 2, "r")
    code, err, started = _train("--resume", str(tmp_path), "--steps", "4", *change)
    assert code == 2 and not started and said in err and "--allow-changes" in err, err
    code, _, started = _train("--resume", str(tmp_path), "--steps", "4", *change,
                              "--allow-changes")
    assert code == 0 and len(started) == 1
    code, _, started = _train("--resume", str(tmp_path), "--steps", "4")
    assert code == 0 and len(started) == 1


def test_the_manifest_holds_the_options_and_checksums(tmp_path: Path) -> None:
    """What a resume is checked against is in pipeblocks.json, written last."""
    ckpt = _save_as_train(tmp_path, 2, "r", "--seed", "5")
    meta = json.loads((ckpt / "pipeblocks.json").read_text())
    assert meta["options"] == {"seed": 5, "batch": 4, "lr": 0.003} and meta["run"] == "r"
    assert set(meta["files"]) == {p.name for p in ckpt.iterdir()} - {"pipeblocks.json"}
    assert checkpoint.digests(ckpt) == meta["files"]


def test_the_first_non_finite_value_is_found_in_the_order_values_are_made() -> None:
    """Keys of ``first_bad``: stage outputs in forward order, then the loss, then gradients
    from the last stage down; the smallest over ranks names where it first appeared."""
    S = 4
    stages = {s: torch.nn.Linear(2, 2) for s in range(S)}
    flags = {s: torch.zeros((), dtype=torch.bool) for s in range(S)}
    assert first_bad(stages, flags, (1.0,), S) == 3 * S  # all finite
    for s in (1, 3):
        for p in stages[s].parameters():
            p.grad = torch.full_like(p, float("nan"))
    assert first_bad(stages, flags, (1.0,), S) == 2 * S - 3  # backward: stage 3 came first
    assert first_bad(stages, flags, (1.0, float("inf")), S) == S  # the loss before that
    flags[2].fill_(True)
    assert first_bad(stages, flags, (1.0,), S) == 2  # stage 2's output before all of them
    assert not any(bool(f) for f in flags.values())  # read and cleared for the next step


def test_tensors_unlike_their_manifest_are_damage(tmp_path: Path) -> None:
    """A manifest that matches this run over tensors of other shapes: CheckpointError (exit 1,
    as any damaged checkpoint), naming the tensor and both shapes."""
    save(tmp_path, 1, {0: torch.nn.Linear(2, 2)}, None, layout=[1], model={})
    with pytest.raises(CheckpointError, match=r"weight is of shape \(2, 2\) in the checkpoint, "
                                              r"this run has shape \(3, 3\)"):
        load(find(tmp_path), {0: torch.nn.Linear(3, 3)}, None)
