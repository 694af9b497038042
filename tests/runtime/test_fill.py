"""The executor's fill hook on real gloo processes: tasks run in gaps, never break training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.runtime.fill import FillRunner, FillWork
from pipeblocks.runtime.launch import launch
from pipeblocks.sim import simulate
from pipeblocks.sim.fill import place_fill

WORKER = str(Path(__file__).with_name("fill_worker.py"))


def _run(mode: str, tmp_path: Path) -> list[dict]:
    out = tmp_path / f"{mode}.json"
    res = launch([sys.executable, WORKER, mode, str(out)], 2, capture=True, grace=5,
                 deadline=120)
    assert res.codes == (0, 0), (res.fault, res.stderr)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One run of the ``emulated`` mode for the two tests that read it."""
    return _run("emulated", tmp_path_factory.mktemp("emulated"))


def test_fill_runs_in_gaps_and_a_raising_task_stops_only_the_queue(emulated: list[dict]
                                                                   ) -> None:
    """Rank 0 (1f1b, 20 ms passes) runs 5 ms tasks while it waits; 'boom' stops the queue."""
    r0, r1 = emulated
    assert r0["steps"] == r1["steps"] == 2  # training finished on both ranks
    assert r0["ran"] == [0, 1, 2] and r0["fill_tasks_done"] == 3  # ok0..2, then boom
    assert len(r0["fill_errors"]) == 1 and "fill task failed on purpose" in r0["fill_errors"][0]
    assert r0["fill_left"] == 0
    assert any("'huge'" in t and "never started" in t for t in r0["fill_never_started"])


def test_fill_uses_the_lead_and_tail_waits_within_the_memory_headroom(emulated: list[dict]
                                                                      ) -> None:
    """Rank 1 (1f1b, p=2) waits one pass before its first and two after its last: fill runs
    in both; a task needing 1 GiB never starts against a 1 MiB headroom (it blocks the queue,
    reported), and the training steps finish."""
    _, r1 = emulated
    assert r1["steps"] == 2 and r1["fill_errors"] == []
    assert r1["ran"][0] == 0 and -1 not in r1["ran"] and 1 not in r1["ran"]
    assert r1["fill_memory_waits"] >= 1 and r1["fill_headroom_mb"] == 1.0
    lead = [s for s in r1["spans"] if s[1] <= 1.0]  # simulated units: the lead is [0, 1]
    tail = [s for s in r1["spans"] if s[0] >= 13.0]  # the tail is [13, 15]
    assert len(lead) >= 2 and len(tail) >= 2  # one per step in the lead; 36 ms of tail
    assert max(e for _, e in r1["spans"]) <= 15.0


def test_fill_leaves_losses_and_gradients_unchanged(tmp_path: Path) -> None:
    """The same step with a second model trained in the gaps gives the same losses and grads."""
    ranks = _run("grads", tmp_path)
    for r in ranks:
        assert r["fill"]["grads"] == r["plain"]["grads"]
        assert r["fill"]["losses"] == r["plain"]["losses"]
    assert sum(r["report"]["fill_tasks_done"] for r in ranks) > 0


def test_eval_fill_losses_equal_a_plain_evaluation(tmp_path: Path) -> None:
    """Eval microbatches run as fill (stage to stage, in gaps, then drained) give the losses of
    the unpartitioned model on the same weights, and training losses stay those without fill."""
    ranks = _run("eval", tmp_path)
    for name in ("1f1b", "v-min"):
        _check_eval(name, ranks)
    # with Adam: eval microbatches 0 and 1 start and finish in step 0, before its update,
    # so they see the initial weights; 2 runs in step 1 on the updated ones
    last = next(r["v-min+adam"] for r in ranks if r["v-min+adam"]["eval"])
    want = _plain_eval("v-min")
    assert [last["eval"][str(e)] for e in range(2)] == pytest.approx(want[:2], rel=1e-6)
    assert last["eval"]["2"] != pytest.approx(want[2], rel=1e-6)
    for r in ranks:
        assert r["v-min+adam"]["in_steps"] == 3 * 2  # every eval pass ran inside a step


def _plain_eval(name: str) -> list[float]:
    import torch

    from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch

    S = generate(name, 2, 4).spec.num_stages
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=S)
    model = TinyGPT(cfg, seed=3)
    with torch.no_grad():
        return [float(lm_loss(model(x), y))
                for x, y in (synthetic_batch(cfg, 2, seed=11, step=e) for e in range(3))]


def _check_eval(name: str, ranks: list[dict]) -> None:
    import torch

    from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch

    S = generate(name, 2, 4).spec.num_stages
    cfg = GPTConfig(vocab=32, seq=8, dim=16, heads=2, layers=S)
    model = TinyGPT(cfg, seed=3)
    with torch.no_grad():
        want = [float(lm_loss(model(x), y))
                for x, y in (synthetic_batch(cfg, 2, seed=11, step=e) for e in range(3))]
        tokens, targets = synthetic_batch(cfg, 8, seed=5, step=0)
        plain = [float(lm_loss(model(tokens[2 * j:2 * j + 2]), targets[2 * j:2 * j + 2]))
                 for j in range(4)]
    last = next(r[name] for r in ranks if r[name]["eval"])
    assert [last["eval"][str(e)] for e in range(3)] == pytest.approx(want, rel=1e-6)
    assert last["train"][0] == pytest.approx(plain, rel=1e-6)
    assert last["train"][1] == last["train"][0]  # no optimizer: the eval did not touch weights
    assert ranks[0][name]["in_gaps"] > 0  # rank 0 ran eval passes of stage 0 in its gaps


def test_bad_fill_arguments_are_spec_errors() -> None:
    """Non-positive estimates and time units are refused with the fix."""
    with pytest.raises(SpecError, match="seconds > 0"):
        FillWork(lambda: None, 0.0)
    sim = simulate(generate("1f1b", 2, 4))
    with pytest.raises(SpecError, match="seconds_per_unit > 0"):
        FillRunner(sim.schedule, 0, place_fill(sim, []).slots[0], [], seconds_per_unit=0.0)


def test_runner_keeps_every_slot_and_drops_what_fits_none() -> None:
    """The lead wait precedes pass 0, the tail runs at the program's end; a task over every
    usable gap (the tail's here: the longest) is listed, never started."""
    sim = simulate(generate("1f1b", 4, 8))
    slots = place_fill(sim, [], edges=True).slots[3]  # rank 3: a lead and a tail wait
    assert [s.before for s in slots] == [0, len(sim.schedule.programs[3])]
    runner = FillRunner(sim.schedule, 3, slots, [FillWork(lambda: None, 0.1, name="long"),
                                                 FillWork(lambda: None, 0.01)],
                        seconds_per_unit=0.02)
    assert list(runner.slots) == [0] and runner.tail == slots[1]
    # the tail: 6 units = 120 ms, 108 ms after the safety 0.1: the 100 ms task fits only there
    assert len(runner.queue) == 2 and runner.never_started == []
    runner.set_unit(0.015)  # 90 ms, 81 usable: the 100 ms task now fits no gap
    assert len(runner.queue) == 1 and "'long'" in runner.never_started[0]


def test_the_memory_headroom_default_fixed_and_refused() -> None:
    """Default: the spare memory less the step's rise to its peak (never more than the spare,
    never negative); a fixed limit is given back as is; a negative one is refused."""
    import torch

    from pipeblocks.runtime.fill_memory import Headroom, memory_in_use

    now, peak, spare = memory_in_use("cpu")
    assert 0 < now <= peak and spare > 0
    h = Headroom("cpu")
    assert h.report()["fill_headroom_mb"] is None  # not asked yet
    x = torch.ones(32 * 2**20, dtype=torch.uint8)  # 32 MiB held: the use (and peak) rise
    got = h()
    after = memory_in_use("cpu")
    del x
    assert 0 <= got <= after[2] - (after[1] - after[0]) + 8 * 2**20  # RSS moves a little
    assert h.report()["fill_headroom_mb"] == got / 2**20
    assert Headroom("cpu", limit=3 * 2**20)() == 3 * 2**20
    with pytest.raises(SpecError, match="headroom must be >= 0"):
        Headroom("cpu", limit=-1.0)
