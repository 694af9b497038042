"""The stage contract in one process: structures between stages, side inputs, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pipeblocks as pb
from pipeblocks.errors import PipeblocksError
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.faults import RankFailure
from pipeblocks.runtime.launch import launch
from pipeblocks.runtime.split import split
from pipeblocks.runtime.stage import Stage, shared_parameters

pytestmark = pytest.mark.torch


class First(nn.Module):
    """Returns a dict: a hidden state, integer ids, a float mask without grad, a weight-only
    output (a root that reaches parameters but no input)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.bias = nn.Linear(4, 4), nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict:
        return {"h": torch.tanh(self.lin(x)) * scale, "ids": (x > 0).long().sum(-1),
                "mask": (x > 0).float(), "w": self.bias * 2}


class Second(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, h, ids, mask, w, scale):
        return (self.lin(h) * mask + w) * scale + ids[:, None].float(), ids


class Mid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, y, ids):
        return torch.relu(self.lin(y)), ids


class Last(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, y, ids):
        return self.lin(y) + ids[:, None]


def _model() -> list[nn.Module]:
    torch.manual_seed(0)
    return [First(), Second(), Mid(), Last()]


def _whole(parts: list[nn.Module], x, scale):
    return parts[3](*parts[2](*parts[1](**parts[0](x, scale), scale=scale)))


@pytest.mark.parametrize("name", ["zb-v", "1f1b", "v-half"])
def test_structures_and_side_inputs_match_plain_autograd(name: str) -> None:
    """A dict (with integer and no-grad tensors and a weight-only output) and tuples between
    4 stages on one rank, a side input two stages ask for: loss and every gradient equal plain
    autograd, with the B/W split where the schedule has one."""
    x, y, scale = torch.randn(8, 4), torch.randn(8, 3), torch.rand(8, 1) + 0.5
    parts = _model()
    schedule = pb.generate(name, 1, 4)
    stages = dict(enumerate(split(parts, schedule.spec.num_stages)))
    ex = Executor(schedule, stages, nn.functional.mse_loss, None, rank=0)
    res = ex.step(x, y, side={"scale": scale})
    ref = _model()
    ref_loss = sum(nn.functional.mse_loss(_whole(ref, xs, ss), ys) for xs, ys, ss in zip(
        x.chunk(4), y.chunk(4), scale.chunk(4), strict=True)) / 4
    ref_loss.backward()
    assert res.loss == pytest.approx(ref_loss.item(), abs=1e-6)
    for (n, p), q in zip(nn.ModuleList(parts).named_parameters(),
                         nn.ModuleList(ref).parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=n)


def test_split_stage_with_several_inputs_equals_fused() -> None:
    """B then W on a stage taking a dict (two inputs need gradients) and returning a tuple
    equals autograd; B computes no weight gradient."""
    torch.manual_seed(1)
    mod = nn.Sequential(Second(), Mid())
    st = Stage(mod, stage=1, num_stages=3)
    h, w = torch.randn(2, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    x = {"h": h, "ids": torch.tensor([1, 2]), "mask": torch.ones(2, 4), "w": w}
    scale = torch.ones(2, 1)
    out = st.forward(0, x, side={"scale": scale})
    gy = torch.randn(2, 4)
    gh, gw = st.backward_input(0, [gy])
    assert all(p.grad is None for p in mod.parameters())
    st.backward_weight(0)
    ref_h, ref_w = h.detach().requires_grad_(), w.detach().requires_grad_()
    got = {n: p.grad.clone() for n, p in mod.named_parameters()}
    mod.zero_grad()
    y2, _ = mod[1](*mod[0](ref_h, x["ids"], x["mask"], ref_w, scale))
    torch.autograd.backward(y2, gy)
    torch.testing.assert_close(out[0], y2.detach())
    torch.testing.assert_close(gh, ref_h.grad)
    torch.testing.assert_close(gw, ref_w.grad)
    for n, p in mod.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)


def test_a_missing_side_input_and_an_unsendable_output_are_clear_errors() -> None:
    """A stage asking for a side input the batch lacks, or returning a non-tensor: errors
    that name it and say what to do."""
    schedule = pb.generate("1f1b", 1, 2)
    ex = Executor(schedule, {0: nn.Sequential(Second())}, nn.functional.mse_loss, None, rank=0)
    with pytest.raises(RankFailure, match=r"asks for side input\(s\) \['scale'\].*side="):
        ex.step({"h": torch.ones(2, 4), "ids": torch.ones(2, dtype=torch.long),
                 "mask": torch.ones(2, 4), "w": torch.ones(2, 4)}, torch.ones(2, 4))
    stage = Stage(nn.Sequential(nn.Linear(2, 2), _Text()), stage=0, num_stages=2)
    with pytest.raises(PipeblocksError, match="holds a str; between stages only tensors"):
        stage.forward(0, torch.ones(1, 2))


class _Text(nn.Module):
    def forward(self, x):
        return (x, "not a tensor")


def test_shared_parameter_warning_names_the_other_stage() -> None:
    """The reason names the other stage, never the stage itself."""
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.weight = a.weight
    why = shared_parameters({0: a, 1: b})
    assert "shared with stage 1" in why[0] and "shared with stage 0" in why[1]


def test_an_undeclared_tie_across_ranks_is_an_error(tmp_path: Path) -> None:
    """Two ranks holding equal copies of a weight that no tie names stop with an error saying
    how to declare it (never a silent half gradient)."""
    worker = tmp_path / "w.py"
    worker.write_text(_TIE_WORKER)
    res = launch([sys.executable, str(worker)], 2, capture=True, grace=5, deadline=120)
    assert not res.ok
    err = "\n".join(res.stderr)
    assert "no tie names" in err and "Executor(ties=[((0, '0.weight'), (1, '0.weight'))])" \
        in err, err


_TIE_WORKER = """
import os, torch, torch.distributed as dist
from torch import nn
import pipeblocks as pb
from pipeblocks.errors import PipeblocksError
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.faults import RankFailure
from pipeblocks.runtime.faults import Guard, write_error
torch.manual_seed(0)
emb = nn.Embedding(5, 3)
head = nn.Linear(3, 5, bias=False)
head.weight = emb.weight
rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
mine = {rank: nn.Sequential(emb if rank == 0 else head)}  # split by hand: no tie recorded
try:
    Executor(pb.generate("1f1b", 2, 2), mine, nn.functional.cross_entropy, None)
except Exception as e:
    write_error(str(e))
    os._exit(2)
"""


def test_a_token_loss_without_count_tokens_is_refused() -> None:
    """A loss returning (sum, count) without count_tokens (the scale would be 1/m of a sum):
    an error that says to pass both."""
    def summed(out, y):
        return nn.functional.mse_loss(out, y, reduction="sum"), y.numel()

    ex = Executor(pb.generate("1f1b", 1, 2), {0: nn.Linear(2, 2)}, summed, None, rank=0)
    with pytest.raises(RankFailure, match=r"needs both.*count_tokens=fn"):
        ex.step(torch.ones(4, 2), torch.zeros(4, 2))
    lin = nn.Linear(2, 2)
    ex = Executor(pb.generate("1f1b", 1, 2), {0: lin}, summed, None, rank=0,
                  count_tokens=lambda y: y.numel())
    x, y = torch.randn(4, 2), torch.zeros(4, 2)
    got = ex.step(x, y).loss
    with torch.no_grad():
        assert got == pytest.approx(float(nn.functional.mse_loss(lin(x), y)), abs=1e-6)


@pytest.mark.distributed
def test_structures_across_four_ranks_match_plain_autograd(tmp_path: Path) -> None:
    """The dict/tuple model on 4 gloo ranks (several tensors per transfer, packed into one
    message; integer and no-grad tensors; a side input): 1f1b and zb-h1, two steps with
    different batch shapes, equal plain autograd."""
    worker, out = tmp_path / "w.py", tmp_path / "out.pt"
    worker.write_text(_CONTRACT_WORKER.format(here=str(Path(__file__).parent)))
    res = launch([sys.executable, str(worker), str(out)], 4, capture=True, grace=5,
                 deadline=200)
    assert res.ok, "\n".join(res.stderr)
    got = torch.load(out, weights_only=False)
    for name in ("1f1b", "zb-h1"):
        for rows, (loss, grads) in zip((8, 4), got[name], strict=True):
            ref = _model()
            x, y, scale = _data(rows)
            want = sum(nn.functional.mse_loss(_whole(ref, xs, ss), ys) for xs, ys, ss in zip(
                x.chunk(4), y.chunk(4), scale.chunk(4), strict=True)) / 4
            want.backward()
            assert abs(loss - want.item()) <= 1e-6
            for n, q in nn.ModuleList(ref).named_parameters():
                torch.testing.assert_close(grads[n], q.grad, rtol=0, atol=1e-6, msg=n)


def _data(rows: int):
    g = torch.Generator().manual_seed(rows)
    return (torch.randn(rows, 4, generator=g), torch.randn(rows, 3, generator=g),
            torch.rand(rows, 1, generator=g) + 0.5)


_CONTRACT_WORKER = """
import os, sys
sys.path.insert(0, {here!r})
import torch, torch.distributed as dist
from torch import nn
import pipeblocks as pb
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.split import split
from test_contract import _data, _model
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
result = {{}}
for name in ("1f1b", "zb-h1"):
    parts = _model()
    names = {{id(p): n for n, p in nn.ModuleList(parts).named_parameters()}}
    stages = split(parts, 4)
    ex = Executor(pb.generate(name, 4, 4), {{rank: stages[rank]}}, nn.functional.mse_loss, None)
    steps = []
    for rows in (8, 4):
        ex.zero_grad()
        x, y, scale = _data(rows)
        res = ex.step(x, y, side={{"scale": scale}})
        grads = {{names[id(p)]: p.grad for p in ex.parameters()}}
        got = [None] * 4 if rank == 0 else None
        dist.gather_object((res.loss, grads), got, dst=0)
        if rank == 0:
            loss = [g[0] for g in got if g[0] is not None][0]
            steps.append((loss, {{k: v for g in got for k, v in g[1].items()}}))
    result[name] = steps
if rank == 0:
    torch.save(result, sys.argv[1])
dist.destroy_process_group()
"""
