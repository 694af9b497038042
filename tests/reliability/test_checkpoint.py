"""Checkpoints: exact round trips, crash-safe writes, safe loading, exact resume across runs.

The first tests use one process (no process group); the last ones run ``pipeblocks train`` for
real (gloo processes): N steps straight equal k steps, a save, a fresh process group and N - k
resumed steps, bit for bit, and other schedules of the same stage layout resume too.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fuzzkit import no_launch, run_cli

from pipeblocks.errors import SpecError
from pipeblocks.runtime import checkpoint
from pipeblocks.runtime.checkpoint import (
    CheckpointError,
    check_compatible,
    find,
    load,
    read_tensors,
    save,
)
from pipeblocks.runtime.faults import RankFailure

pytestmark = pytest.mark.torch
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent / "pipeblocks"
MODEL = ["--dim", "32", "--seq", "16", "--vocab", "64", "--microbatch-size", "2",
         "--timeout", "30"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trained(seed: int, steps: int = 2) -> tuple[dict[int, torch.nn.Module], torch.optim.Adam]:
    """Two stages and one Adam over both, after ``steps`` steps on fixed data."""
    torch.manual_seed(seed)
    stages = {0: torch.nn.Linear(4, 4), 3: torch.nn.Sequential(torch.nn.Linear(4, 4),
                                                               torch.nn.LayerNorm(4))}
    opt = torch.optim.Adam([p for m in stages.values() for p in m.parameters()], lr=0.1)
    for i in range(steps):
        x = torch.full((2, 4), float(i + 1))
        stages[3](stages[0](x)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return stages, opt


def _params(stages: dict[int, torch.nn.Module]) -> list[torch.Tensor]:
    return [p.detach().clone() for _, m in sorted(stages.items()) for p in m.parameters()]


def test_round_trip_restores_weights_and_optimizer_exactly(tmp_path: Path) -> None:
    """Save after 2 steps, load into fresh modules: one more step on both gives bit-identical
    parameters (so Adam's moments and step count came back too)."""
    stages, opt = _trained(0)
    save(tmp_path, 2, stages, opt, layout=[1, 2], model={"test": 1})
    fresh, fresh_opt = _trained(1, steps=0)
    assert load(find(tmp_path), fresh, fresh_opt) == 2
    assert all(torch.equal(a, b) for a, b in zip(_params(stages), _params(fresh), strict=True))
    for s, o in ((stages, opt), (fresh, fresh_opt)):
        s[3](s[0](torch.ones(2, 4))).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(_params(stages), _params(fresh), strict=True))


def _tied(seed: int) -> tuple[dict[int, torch.nn.Module], torch.optim.Adam]:
    """Stages 0 and 1 holding two copies of one tied weight, as two ranks do (equal, distinct
    Parameters; the tie recorded on the stages as ``split`` records it)."""
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    b = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4))
    b[0].weight = torch.nn.Parameter(a[0].weight.detach().clone())
    a.pipeblocks_ties = b.pipeblocks_ties = (((0, "0.weight"), (1, "0.weight")),)
    stages = {0: a, 1: b}
    return stages, torch.optim.Adam([p for m in stages.values() for p in m.parameters()], lr=0.1)


def _tied_step(stages: dict[int, torch.nn.Module], opt: torch.optim.Adam) -> None:
    """One step, the copies' gradients summed as runtime.ties does across ranks."""
    stages[1](stages[0](torch.ones(2, 4))).pow(2).sum().backward()
    total = stages[0][0].weight.grad + stages[1][0].weight.grad
    for s in (0, 1):
        stages[s][0].weight.grad = total.clone()
    opt.step()
    opt.zero_grad()


def test_a_tied_weight_is_stored_once_and_every_copy_loads_it(tmp_path: Path) -> None:
    """The checkpoint holds the tied weight and its Adam state under the first copy's key only;
    loading gives both copies that weight and state (one more step keeps every parameter equal
    to the saved run's)."""
    stages, opt = _tied(0)
    _tied_step(stages, opt)
    save(tmp_path, 1, stages, opt, layout=[1, 2], model={"test": 1})
    keys = set(read_tensors(find(tmp_path).path))
    assert "stage0.model.0.weight" in keys and "stage1.model.0.weight" not in keys
    assert {k for k in keys if k.startswith("stage0.optim.0.weight.")}
    assert not {k for k in keys if k.startswith("stage1.optim.0.weight.")}
    assert "stage1.model.1.weight" in keys  # untied weights as before
    fresh, fresh_opt = _tied(1)
    assert not torch.equal(fresh[0][0].weight, stages[0][0].weight)
    load(find(tmp_path), fresh, fresh_opt)
    assert torch.equal(fresh[1][0].weight, stages[0][0].weight)
    assert all(torch.equal(a, b) for a, b in zip(_params(stages), _params(fresh), strict=True))
    _tied_step(stages, opt)
    _tied_step(fresh, fresh_opt)
    assert all(torch.equal(a, b) for a, b in zip(_params(stages), _params(fresh), strict=True))


def test_latest_names_the_newest_and_old_ones_are_pruned(tmp_path: Path) -> None:
    """Four saves with keep=2: the two newest remain, ``latest`` names the last, and a
    checkpoint folder can also be named directly."""
    stages, opt = _trained(0)
    for step in range(1, 5):
        save(tmp_path, step, stages, opt, layout=[1, 2], model={}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003",
                                                          "step-00000004"]
    assert find(tmp_path).step == 4 and find(tmp_path / "step-00000003").step == 3


def test_a_save_that_fails_midway_leaves_the_last_checkpoint(tmp_path: Path,
                                                             monkeypatch) -> None:
    """A save that dies after writing part of its files leaves ``latest`` on the previous,
    whole checkpoint; the half-written folder is never read and the next save clears it."""
    stages, opt = _trained(0)
    save(tmp_path, 1, stages, opt, layout=[1, 2], model={})
    before = read_tensors(tmp_path)

    def broken(state, storage_writer, **_):
        Path(storage_writer.path).mkdir(parents=True, exist_ok=True)
        (Path(storage_writer.path) / "__0_0.distcp").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.dcp, "save", broken)
    with pytest.raises(RankFailure, match="rank 0 failed in saving the checkpoint of step 2: "
                                          "OSError: disk full"):
        save(tmp_path, 2, stages, opt, layout=[1, 2], model={})
    assert (tmp_path / ".tmp-step-00000002").is_dir()
    assert find(tmp_path).step == 1
    after = read_tensors(tmp_path)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    monkeypatch.undo()
    save(tmp_path, 2, stages, opt, layout=[1, 2], model={})
    assert find(tmp_path).step == 2 and not (tmp_path / ".tmp-step-00000002").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_unpickles_no_foreign_object(tmp_path: Path) -> None:
    """A checkpoint whose DCP metadata pickle names os.system is refused unread: the command
    never runs (tensors themselves are read with torch.load(weights_only=True) by DCP)."""
    stages, opt = _trained(0)
    path = save(tmp_path, 1, stages, opt, layout=[1, 2], model={})
    (path / ".metadata").write_bytes(pickle.dumps(_Evil()))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="names posix.system, which pipeblocks does not"):
            load(find(tmp_path), stages, opt)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


def test_layout_checks_name_what_differs(tmp_path: Path) -> None:
    """Another stage count, other parts per stage or other model sizes are refused with what
    differs and the fix; the same layout passes."""
    stages, opt = _trained(0)
    save(tmp_path, 1, stages, opt, layout=[2, 3], model={"dim": 32})
    info = find(tmp_path)
    check_compatible(info, [2, 3], {"dim": 32})
    for layout, model, text in (([2, 3, 1], {"dim": 32}, "it has 2 stages, this run 3"),
                                ([3, 2], {"dim": 32}, "its parts per stage are 2,3, this run's 3,2"),
                                ([2, 3], {"dim": 64}, "its model dim is 32, this run's 64")):
        with pytest.raises(SpecError, match="stage layout differs") as e:
            check_compatible(info, layout, model)
        assert text in str(e.value) and "resume with a schedule of 2 stages" in str(e.value)


def test_find_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    """A missing folder, an empty one, and a foreign pipeblocks.json are CheckpointErrors."""
    with pytest.raises(CheckpointError, match="no such folder"):
        find(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        find(tmp_path)
    (tmp_path / "pipeblocks.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="is not a pipeblocks checkpoint"):
        find(tmp_path)


def _save_forever(folder: Path, ready) -> None:
    """The child: checkpoints back to back; before saving step k every parameter and every
    optimizer state tensor is set to k, so a checkpoint is whole exactly when all its tensors
    equal the step in its pipeblocks.json. Sets ``ready`` when it starts saving."""
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 256)).sum().backward()
    opt.step()  # creates the optimizer state (step, exp_avg, exp_avg_sq)
    try:
        step = find(folder).step + 1
    except CheckpointError:
        step = 1
    ready.set()
    while True:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(step)
                for v in opt.state[p].values():
                    v.fill_(step)
        save(folder, step, {0: net}, opt, layout=[2], model={"kind": "killee"})
        step += 1


def test_killed_at_random_moments_a_whole_checkpoint_remains(tmp_path: Path) -> None:
    """A process saving checkpoints back to back is SIGKILLed 12 times at random moments (and
    started again each time): every time, ``latest`` names a checkpoint whose every tensor
    holds the step its pipeblocks.json says (a torn write would mix steps or fail to load)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # torch is imported already: starts in ms
    rng = random.Random(9)
    steps_seen = []
    for _ in range(12):
        ready = ctx.Event()
        child = ctx.Process(target=_save_forever, args=(tmp_path, ready), daemon=True)
        child.start()
        # the moments count from the first save: building the child's model and optimizer
        # (a lazy import of torch._dynamo on a loaded host) took longer than 0.4 s
        assert ready.wait(60)
        time.sleep(rng.uniform(0.05, 0.4))
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        try:
            info = find(tmp_path)
        except CheckpointError:
            continue  # killed before its first checkpoint was complete
        tensors = read_tensors(tmp_path)
        assert tensors and all(bool((t == info.step).all()) for t in tensors.values()), info
        steps_seen.append(info.step)
    assert steps_seen == sorted(steps_seen) and len(steps_seen) >= 8, steps_seen
    assert steps_seen[-1] > len(steps_seen), "the kills should land at many different moments"


# --- real runs: pipeblocks train --save / --resume ------------------------------------------------

def _train(*args: str) -> dict:
    out = subprocess.run([str(BIN), "train", *args, *MODEL, "--json"], capture_output=True,
                         text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """Four real runs (each a fresh process group) over one 4-stage layout:

    - ``straight``: v-half on 2 ranks, 4 steps, saving after steps 2 and 4 (in ``straight/``);
    - ``v-half``: the same schedule resumed from step 2 for steps 3-4;
    - ``interleaved-1f1b``: 2 ranks, loop placement (other stages on each rank), resumed;
    - ``looped-bfs``: 1 rank holding all 4 stages, resumed.
    """
    tmp = tmp_path_factory.mktemp("runs")
    common = ["--microbatches", "4", "--steps", "4"]
    out = {"straight": _train("--schedule", "v-half", "--ranks", "2", *common,
                              "--save", str(tmp / "straight"), "--save-every", "2")}
    for name, ranks, extra in (("v-half", "2", []), ("interleaved-1f1b", "2", []),
                               ("looped-bfs", "1", ["--stages-per-rank", "4"])):
        out[name] = _train("--schedule", name, "--ranks", ranks, *common, *extra,
                           "--resume", str(tmp / "straight" / "step-00000002"),
                           "--save", str(tmp / name))
    return tmp, out


def _same(a: Path, b: Path, exact: bool) -> None:
    ta, tb = read_tensors(a), read_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 10
    for k in ta:
        ok = torch.equal(ta[k], tb[k]) if exact else torch.allclose(ta[k], tb[k], atol=1e-6)
        assert ok, f"{k} differs"


@pytest.mark.distributed
@pytest.mark.slow
def test_resume_is_bit_exact(runs: tuple[Path, dict[str, dict]]) -> None:
    """v-half on 2 ranks: 4 steps straight equal 2 steps, a save, a fresh process group
    resuming for steps 3-4: the same losses and the same final weights and Adam state, bit for
    bit."""
    tmp, out = runs
    assert out["v-half"]["first_step"] == 3
    assert out["v-half"]["loss"] == out["straight"]["loss"][2:]
    _same(tmp / "straight" / "step-00000004", tmp / "v-half" / "step-00000004", exact=True)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", ["interleaved-1f1b", "looped-bfs"])
def test_other_schedules_of_the_same_layout_resume(runs: tuple[Path, dict[str, dict]],
                                                   name: str) -> None:
    """Interleaved 1F1B on 2 ranks (other stages on each rank than v-half's) and looped BFS on
    1 rank (all 4 stages) resume v-half's checkpoint: the losses of steps 3-4 and the final
    weights equal the straight run's (to 1e-6: another order of the same float operations)."""
    tmp, out = runs
    assert out[name]["first_step"] == 3
    assert out[name]["loss"] == pytest.approx(out["straight"]["loss"][2:], abs=1e-6)
    _same(tmp / "straight" / "step-00000004", tmp / name, exact=False)


@pytest.mark.distributed
@pytest.mark.slow
def test_refusals_come_before_any_process_starts(runs: tuple[Path, dict[str, dict]]) -> None:
    """Another layout, a finished checkpoint, --save onto a file, --save-every alone,
    --emulate-ms or --check-grads with a checkpoint: exit 2, one line, no process started."""
    tmp, _ = runs
    ckpt = str(tmp / "straight")
    (tmp / "file").write_text("x")
    base = ["train", *MODEL, "--microbatches", "4"]
    cases = [
        (["--schedule", "1f1b", "--ranks", "2", "--resume", ckpt], "it has 4 stages, this run 2"),
        (["--schedule", "v-half", "--ranks", "2", "--layout", "1,3,3,1", "--resume", ckpt],
         "its parts per stage are 3,2,2,3, this run's 2,3,3,2"),
        (["--schedule", "v-half", "--ranks", "2", "--dim", "64", "--resume", ckpt],
         "its model dim is 32, this run's 64"),
        (["--schedule", "v-half", "--ranks", "2", "--steps", "4", "--resume", ckpt],
         "nothing to run"),
        (["--schedule", "v-half", "--ranks", "2", "--save", str(tmp / "file")], "is a file"),
        (["--schedule", "v-half", "--ranks", "2", "--save-every", "2"], "needs --save"),
        (["--schedule", "v-half", "--ranks", "2", "--emulate-ms", "1", "--save", ckpt],
         "need real passes"),
        (["--schedule", "v-half", "--ranks", "2", "--check-grads", "--resume", ckpt],
         "drop it with --resume"),
    ]
    with no_launch() as started:
        for args, text in cases:
            o = run_cli(base + args)
            assert o.code == 2 and text in o.err and len(o.err.strip().splitlines()) == 1, o.err
    assert started == []
