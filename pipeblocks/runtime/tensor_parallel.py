"""Tensor parallel per pipeline stage: DTensor plans applied on the mesh's tp dimension.

Each stage module is parallelized with ``torch.distributed.tensor.parallel.parallelize_module``
on the tensor-parallel sub-mesh of one ``init_device_mesh`` over ``(dp, pp, tp)`` (the rank
order of :class:`pipeblocks.ir.hybrid.Mesh`, tensor parallel innermost). The plans are data:
:data:`PLANS` maps a layer's class name to ``{submodule: style}``, Megatron's pattern:

- the small GPT's ``Block`` (:mod:`pipeblocks.models.gpt`): ``qkv`` and ``fc`` column-wise,
  ``proj`` and ``out`` row-wise; the fused ``qkv`` rows are grouped by head (q, k, v of head 0,
  then of head 1, ...), so a column shard holds whole heads;
- HF's ``LlamaDecoderLayer`` (:mod:`pipeblocks.models.hf`, a ``LlamaConfig``-built model):
  ``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj`` column-wise, ``o_proj`` and
  ``down_proj`` row-wise.

Every other layer (embeddings, norms, the head) stays replicated: each tp rank holds it whole
and computes the same gradient. A model source may give its own ``tp_plan`` (the same shape)
to extend or replace these.

Note "what travels": a column-wise layer takes a replicated input and a row-wise layer
all-reduces its output back to a replicated one; both hand plain tensors to the rest of the
layer (``use_local_output``), so a stage's output is the **full replicated activation** (a
plain tensor, the local value of a Replicate DTensor). Between pipeline ranks each tp rank
sends it to the rank of the same tp index in the next stage's group, through the executor's
unchanged P2P: every one of the ``tp`` pipelines of a dp replica carries the same activations
and gradients. Per block and microbatch: two all-reduces of a ``(b, t, dim)`` activation in F
(after ``proj`` and ``out``) and two in the backward (the input gradients of ``qkv`` and
``fc``), over the tp group (intra-node when tp fits a node): what
:func:`pipeblocks.sim.collectives.tp_block_time` charges.

Note "B/W split": DTensor's redistributions are custom autograd Functions on the input path, so
the stage's split check (:mod:`pipeblocks.runtime.stage`) finds them and runs the fused
backward for B and nothing for W, with a warning that names the Function; the schedule is
unchanged (zero-bubble schedules still run, with W empty).

    >>> sorted(PLANS["Block"].items())
    [('fc', 'colwise'), ('out', 'rowwise'), ('proj', 'rowwise'), ('qkv', 'colwise')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from pipeblocks.errors import SpecError
from pipeblocks.ir.hybrid import Mesh

__all__ = ["PLANS", "device_mesh", "parallelize_stage", "parallelize_stages", "planned_layers",
           "plans_of", "check_model"]

COLWISE, ROWWISE = "colwise", "rowwise"

PLANS: dict[str, dict[str, str]] = {
    "Block": {"qkv": COLWISE, "proj": ROWWISE, "fc": COLWISE, "out": ROWWISE},
    "LlamaDecoderLayer": {
        "self_attn.q_proj": COLWISE, "self_attn.k_proj": COLWISE, "self_attn.v_proj": COLWISE,
        "self_attn.o_proj": ROWWISE,
        "mlp.gate_proj": COLWISE, "mlp.up_proj": COLWISE, "mlp.down_proj": ROWWISE,
    },
}


def device_mesh(mesh: Mesh, device_type: str) -> Any:
    """The whole mesh as a 3-D DeviceMesh named ``("dp", "pp", "tp")`` (a collective call).

    ``init_device_mesh`` lays ranks out row-major, as :class:`Mesh` does; its ``["tp"]`` and
    ``["dp"]`` slices share this root, which FSDP2 over a tensor-parallel module needs."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (mesh.dp, mesh.pp, mesh.tp),
                            mesh_dim_names=("dp", "pp", "tp"))


def _style(name: str) -> Any:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    if name == COLWISE:
        return ColwiseParallel()
    if name == ROWWISE:
        return RowwiseParallel()
    raise SpecError(f"tensor-parallel style {name!r} is not one of {COLWISE!r}, {ROWWISE!r}")


def _heads(layer: nn.Module) -> list[tuple[str, int]]:
    """The head counts a tp degree must divide (GPT block; Llama query and key/value heads)."""
    if isinstance(getattr(layer, "heads", None), int):
        return [("heads", layer.heads)]
    cfg = getattr(getattr(layer, "self_attn", None), "config", None)
    if cfg is None:
        return []
    return [("attention heads", cfg.num_attention_heads),
            ("key/value heads", getattr(cfg, "num_key_value_heads", None)
             or cfg.num_attention_heads)]


def planned_layers(module: nn.Module, tp: int,
                   plans: Mapping[str, Mapping[str, str]] = PLANS) -> int:
    """How many layers of ``module`` the plans shard; refuses a ``tp`` that does not divide
    their heads or their sharded widths."""
    count = 0
    for layer in module.modules():
        plan = plans.get(type(layer).__name__)
        if plan is None:
            continue
        count += 1
        for what, n in _heads(layer):
            if n % tp:
                raise SpecError(f"tensor parallel splits whole heads: --tp {tp} must divide "
                                f"the {what} ({n}); use a --tp that divides {n}")
        for name in plan:
            lin = layer.get_submodule(name)
            size = lin.out_features if plan[name] == COLWISE else lin.in_features
            if size % tp:
                raise SpecError(f"tensor parallel shards {type(layer).__name__}.{name} "
                                f"({size} features) evenly: --tp {tp} must divide {size}")
    return count


def parallelize_stage(module: nn.Module, tp_mesh: Any,
                      plans: Mapping[str, Mapping[str, str]] = PLANS) -> int:
    """Apply the plans to every layer of ``module`` they name (in place); the count."""
    from torch.distributed.tensor.parallel import parallelize_module

    count = planned_layers(module, tp_mesh.size(), plans)
    for layer in list(module.modules()):
        plan = plans.get(type(layer).__name__)
        if plan is not None:
            parallelize_module(layer, tp_mesh, {k: _style(v) for k, v in plan.items()})
    return count


def parallelize_stages(stages: Mapping[int, nn.Module], mesh: Mesh, device: Any,
                       model: Any = None) -> Any:
    """Tensor-parallelize this rank's stages on the tp slice of the whole mesh (moved to
    ``device`` first); returns the 3-D DeviceMesh (its ``["dp"]`` slice is FSDP2's). A model
    source's ``tp_plan`` (class name -> {submodule: style}) extends :data:`PLANS`."""
    full = device_mesh(mesh, device.type)
    plans = plans_of(model)
    for m in stages.values():
        m.to(device)
        parallelize_stage(m, full["tp"], plans)
    return full


def plans_of(model: Any) -> dict[str, Mapping[str, str]]:
    """:data:`PLANS` with a model source's own ``tp_plan`` over them."""
    return {**PLANS, **dict(getattr(model, "tp_plan", None) or {})}


def check_model(source: Any, tp: int) -> int:
    """The layers of a model source's whole model the plans shard at ``tp`` (built here, no
    process group needed); refuses a model with none, or a ``tp`` its layers cannot take."""
    model = source.build()
    whole = model if isinstance(model, nn.Module) else nn.ModuleList(model)
    plans = plans_of(source)
    count = planned_layers(whole, tp, plans)
    if count == 0:
        raise SpecError(f"--tp {tp}: no layer of the model has a tensor-parallel plan (plans "
                        f"for: {', '.join(sorted(plans))}); give the model source a tp_plan "
                        f"or use --tp 1")
    return count
