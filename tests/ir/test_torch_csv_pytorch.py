"""PyTorch's own CSV, both ways: files PyTorch writes read right; files we write PyTorch reads.

PyTorch builds its multi-stage schedules (``pipeline_order``: per rank, ``_Action`` or None)
from stage objects; the tests give it minimal stand-ins (sizes only; no process group), let it
write ``_dump_csv(path, format="compute_only")`` and compare our reading with its objects,
letter by letter through the documented mapping. These are private APIs: skipped if absent.
"""

from __future__ import annotations

import pathlib
import types

import pytest

from pipeblocks.ir import Action, Pass, Placement, validate
from pipeblocks.ir.formats import load, torch_csv

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")
schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
if not hasattr(schedules.PipelineScheduleMulti, "_dump_csv"):  # pragma: no cover
    pytest.skip("this torch has no PipelineScheduleMulti._dump_csv", allow_module_level=True)

# PyTorch's letters -> ours (the mapping documented in pipeblocks.ir.formats.torch_csv).
LETTERS = {"F": Pass.F, "I": Pass.B, "W": Pass.W, "B": Pass.BW}


def _stages(p: int, v: int) -> list[types.SimpleNamespace]:
    """Stand-ins for rank 0's PipelineStage objects: what the schedule constructors read."""
    return [
        types.SimpleNamespace(num_stages=p * v, group_size=p, group_rank=0, stage_index=k * p,
                              is_first=k == 0, is_last=k == v - 1, submod=torch.nn.Identity())
        for k in range(v)
    ]


def _expected(order: dict) -> list[list[Action]]:  # type: ignore[type-arg]
    """PyTorch's pipeline_order as our actions: idle slots dropped, overlaps expanded."""
    out = []
    for rank in sorted(order):
        prog: list[Action] = []
        for a in order[rank]:
            if a is None:
                continue
            for sub in a.sub_actions or (a,):
                prog.append(Action(sub.stage_index, LETTERS[sub.computation_type.value],
                                   sub.microbatch_index))
        out.append(prog)
    return out


CASES = [
    ("ScheduleInterleaved1F1B", 4, 8, Placement.LOOP),
    ("ScheduleInterleaved1F1B", 3, 5, Placement.LOOP),
    ("ScheduleLoopedBFS", 4, 6, Placement.LOOP),
    ("ScheduleInterleavedZeroBubble", 4, 8, Placement.LOOP),
    ("ScheduleZBVZeroBubble", 4, 8, Placement.V),
    ("ScheduleDualPipeV", 4, 8, Placement.V),
]


@pytest.mark.parametrize(("cls", "p", "m", "placement"), CASES)
def test_reads_csv_written_by_pytorch(
    tmp_path: pathlib.Path, cls: str, p: int, m: int, placement: Placement
) -> None:
    """Our reader gives PyTorch's actions per rank (letters translated), infers its placement,
    and our validator accepts PyTorch's schedule."""
    if not hasattr(schedules, cls):
        pytest.skip(f"this torch has no {cls}")
    sched = getattr(schedules, cls)(_stages(p, 2), m, loss_fn=lambda out, target: out)
    path = tmp_path / "torch.csv"
    sched._dump_csv(str(path), format="compute_only")
    ours = load(path)
    assert [list(prog) for prog in ours.programs] == _expected(sched.pipeline_order)
    assert ours.spec.num_ranks == p and ours.spec.num_microbatches == m
    assert ours.spec.stages_per_rank == 2 and ours.spec.placement is placement
    validate(ours)


@pytest.mark.parametrize("name", ["1f1b", "gpipe", "interleaved-1f1b", "looped-bfs", "zb-h1",
                                  "zb-h2", "zb-v", "v-half", "v-min", "v-zb", "1f1b-v",
                                  "dualpipe-v"])
def test_pytorch_reads_our_csv(tmp_path: pathlib.Path, name: str) -> None:
    """PyTorch's _load_csv (with its own schedule check and lowering) accepts our CSV and holds
    exactly our actions, in its letters."""
    from pipeblocks.generators import generate, names

    if name not in names():
        pytest.skip(f"{name} is not registered")
    s = generate(name, 4, 8)
    path = tmp_path / f"{name}.csv"
    path.write_text(torch_csv.dumps(s))
    runtime = schedules._PipelineScheduleRuntime(
        _stages(4, s.spec.stages_per_rank), 8, loss_fn=lambda out, target: out)
    runtime._load_csv(str(path), format="compute_only")
    assert _expected(runtime.pipeline_order) == [list(prog) for prog in s.programs]
