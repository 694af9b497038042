"""HuggingFace models (tiny Llama, tied GPT-2) on 4 real gloo ranks equal the whole model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from pipeblocks.runtime.launch import launch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import hf_worker as hw  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
LABELS = (*hw.SCHEDULES, "search")


def _reference(kind: str, layers: int, steps: int = 3, lr: float = hw.LR):
    """HF's own loss (labels, padding) and gradients, stepped by SGD as the pipeline is."""
    model = hw.build(kind, layers)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = []
    for step in range(steps):
        ids, labels, side = hw.batch(step)
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels, **side).loss
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        opt.step()
    return model, out


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "out.pt"
    res = launch([sys.executable, hw.__file__, request.param, str(out)], hw.P, capture=True,
                 grace=5, deadline=400)
    assert res.ok, "\n".join(res.stderr)
    return request.param, torch.load(out, weights_only=False)


@pytest.mark.parametrize("label", LABELS)
def test_loss_and_every_gradient_equal_the_whole_model(run, label: str) -> None:
    """Three steps, sequence lengths 8, 6, 7: losses and gradients within 1e-5 of HF's."""
    kind, results = run
    per_rank = results[label]
    layers = 4 if label in ("1f1b", "zb-h1") else 8
    _, ref = _reference(kind, layers)
    for step, (ref_loss, ref_grads) in enumerate(ref):
        losses = [out[step][0] for out, _ in per_rank if out[step][0] is not None]
        assert len(losses) == 1 and abs(losses[0] - ref_loss) <= 1e-5, (step, losses, ref_loss)
        grads: dict[str, list[torch.Tensor]] = {}
        for out, _ in per_rank:
            for n, g in out[step][1].items():
                grads.setdefault(n, []).append(g)
        assert grads.keys() == ref_grads.keys()
        worst = max(float((g - ref_grads[n]).abs().max()) for n, gs in grads.items() for g in gs)
        assert worst <= 1e-5, f"{kind} {label} step {step}: max grad diff {worst}"


@pytest.mark.parametrize("label", LABELS)
def test_tied_copies_stay_bit_identical(run, label: str) -> None:
    """Every copy of a weight, on every rank, is the same after the steps (GPT-2's tie)."""
    kind, results = run
    copies: dict[str, list[torch.Tensor]] = {}
    for _, tied in results[label]:
        for n, w in tied.items():
            copies.setdefault(n, []).append(w)
    several = {n: ws for n, ws in copies.items() if len(ws) > 1}
    if kind == "gpt2" and label == "1f1b":
        assert "transformer.wte.weight" in several  # stage 0 and the last are 3 ranks apart
    for n, ws in several.items():
        assert all(torch.equal(ws[0], w) for w in ws[1:]), n


def test_clip_grad_norm_and_eval_equal_the_whole_model(run) -> None:
    """clip_grad_norm_ over 4 ranks equals torch's on the whole model; eval equals HF's loss."""
    kind, results = run
    model = hw.build(kind, 4)
    ids, labels, side = hw.batch(0)
    model(input_ids=ids, labels=labels, **side).loss.backward()
    want_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), hw.CLIP))
    norms = [norm for norm, _, _ in results["clip"]]
    assert all(abs(x - want_norm) <= 1e-5 * max(1.0, want_norm) for x in norms), norms
    for _, grads, _ in results["clip"]:
        for n, g in grads.items():
            torch.testing.assert_close(g, dict(model.named_parameters())[n].grad,
                                       rtol=0, atol=1e-6)
    ids, labels, side = hw.batch(1)
    with torch.no_grad():
        want = model(input_ids=ids, labels=labels, **side).loss.item()
    (got,) = [loss for _, _, loss in results["clip"] if loss is not None]
    assert abs(got - want) <= 1e-5
