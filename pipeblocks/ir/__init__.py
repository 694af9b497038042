"""The schedule IR: passes, actions, the pipeline spec, schedules, validation and text formats.

Glossary (used everywhere in pipeblocks):

- **rank**: one pipeline process/device, 0..p-1 (``num_ranks``).
- **stage**: one model chunk by its global index 0..S-1 in forward order, S = p * v.
- **local**: a stage's slot on its rank, 0..v-1 (``stages_per_rank`` = v).
- **mb**: microbatch index 0..m-1 (``num_microbatches``). Microbatches are never "chunks".
- **pass**: F (forward), B (gradient w.r.t. the stage's inputs), W (w.r.t. its weights),
  BW (B and W fused: the ordinary backward).

Named notes cited elsewhere:

- **V turn**: under the ``v`` placement rank p-1 holds stages p-1 and p; the hand-over between
  them (activations forward, gradients backward) stays on the rank and costs no transfer.
- **W deferral**: W depends only on its own B, so schedules may push it later to fill idle time;
  its activation memory (``mem_w``) is held until it runs.

    >>> from pipeblocks.ir import PipelineSpec
    >>> PipelineSpec(4, 8).num_stages
    4
"""

from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.ascii import grid
from pipeblocks.ir.deps import needs, walk
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement
from pipeblocks.ir.validate import is_valid, validate

__all__ = [
    "Action",
    "Pass",
    "PipelineSpec",
    "Placement",
    "Schedule",
    "grid",
    "needs",
    "walk",
    "validate",
    "is_valid",
]
