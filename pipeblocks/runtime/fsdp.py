"""FSDP2 data parallel per stage: ``fully_shard`` over the data-parallel group, driven by ops.

Each stage module is wrapped with ``torch.distributed.fsdp.fully_shard`` on the data-parallel
mesh dimension (``reshard_after_forward`` selectable). FSDP2's own gradient reduction would run
after every backward pass; here it is turned off (``set_requires_gradient_sync(False)``: the
microbatches' gradients accumulate unsharded) and the lowered program's ops drive it instead
(:func:`pipeblocks.ir.hybrid.with_data_parallel` with ``DPMode.FSDP``):

- ``unshard(s)``: all-gather stage s's parameters, asynchronously (FSDP's pre-forward waits for
  it); placed one stage ahead, before the first pass of the stage that precedes s on the rank.
- ``reduce_grad(s)``: after s's last W or BW, reduce-scatter its accumulated gradients once
  (FSDP's post-backward, as the last backward of the step); FSDP averages over the group.
- ``reshard(s)``: free the gathered parameters after the reduction.

:meth:`FSDPReducer.finish`, before the optimizer steps, runs FSDP's end-of-backward callback of
every stage (waits for the reduce-scatters) and turns the automatic sync off again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from pipeblocks.ir.hybrid import Collective, CollectiveKind
from pipeblocks.runtime.tree import call, wanted_side

__all__ = ["FSDPReducer", "dp_mesh", "SideSequential"]


class SideSequential(nn.Sequential):
    """A stage's layers in order, each given the side inputs its forward names.

    A plain ``nn.Sequential`` stage runs its layers one by one, so each layer gets its own
    side inputs (``position_ids``, masks); FSDP2 puts its hooks on the container, which is then
    called whole, and a stock ``Sequential.forward`` takes no side inputs. The stage's class is
    swapped for this one before ``fully_shard``: the same layers, the same calls, the same
    parameter names."""

    def forward(self, x: Any, **side: Any) -> Any:  # type: ignore[override]
        for layer in self:
            x = call(layer, x, side, wanted_side(layer, list(side)))
        return x

    def side_children(self) -> list[nn.Module]:
        """The layers whose side inputs this container asks for (runtime.tree.wanted_side)."""
        return list(self)


class FSDPReducer:
    """Shards each stage over ``mesh`` (a 1-D DeviceMesh: the dp group) and runs its ops."""

    mode = "fsdp"

    def __init__(self, modules: Mapping[int, nn.Module], mesh: Any,
                 reshard_after_forward: bool = True) -> None:
        from torch.distributed.fsdp import fully_shard

        self._state = fully_shard.state
        self.group, self.size = mesh.get_group(), mesh.size()  # the dp group (token counts)
        self.modules: dict[int, Any] = {}
        for s, m in modules.items():
            if type(m) is nn.Sequential:  # its layers keep their side inputs
                m.__class__ = SideSequential
            fully_shard(m, mesh=mesh, reshard_after_forward=reshard_after_forward)
            m.set_requires_gradient_sync(False)  # type: ignore[operator]
            self.modules[s] = m
        self._reduced: list[Any] = []

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """The stages unsharded for the duration: a :class:`Stage` built inside takes the
        unsharded parameters, the ones autograd sees in every pass (FSDP2 keeps those objects
        across reshards and only frees their storage)."""
        for m in self.modules.values():
            m.unshard()
        try:
            yield
        finally:
            for m in self.modules.values():
                m.reshard()

    def run(self, op: Collective) -> None:
        m = self.modules.get(op.stage)
        if m is None:
            return
        if op.kind is CollectiveKind.UNSHARD:
            m.unshard(async_op=True)  # FSDP's pre-forward waits for it
        elif op.kind is CollectiveKind.RESHARD:
            m.reshard()
        else:
            m.set_is_last_backward(True)
            m.set_requires_gradient_sync(True)
            state = self._state(m)
            for sub in state._state_ctx.all_states:
                if sub._fsdp_param_group is not None:
                    sub._fsdp_param_group.post_backward()  # the reduce-scatter, once
            self._reduced.append(state)

    def finish(self) -> None:
        for state in self._reduced:
            state._root_post_backward_final_callback()
        self._reduced.clear()
        for m in self.modules.values():
            m.set_requires_gradient_sync(False)
            m.set_is_last_backward(False)


def dp_mesh(mesh: Any, device_type: str) -> Any:
    """The data-parallel dimension of the whole mesh as a 1-D DeviceMesh (a collective call;
    ``init_device_mesh`` lays ranks out row-major over (dp, pp, tp), as ir/hybrid.py does)."""
    from torch.distributed.device_mesh import init_device_mesh

    full = init_device_mesh(device_type, (mesh.dp, mesh.pp, mesh.tp),
                            mesh_dim_names=("dp", "pp", "tp"))
    return full["dp"]
