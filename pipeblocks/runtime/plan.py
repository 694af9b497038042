"""What a training run is, checked once: the plan every rank of :mod:`pipeblocks.runtime.trainer`
runs. The command line (:mod:`pipeblocks.cli.train`) builds it from the options; a script can
build it directly. The model comes from a :class:`ModelSource` (the small GPT's is
:class:`pipeblocks.models.gpt.GPTSource`; docs/models.md has the protocol), so nothing here knows
a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pipeblocks.ir.schedule import Schedule
from pipeblocks.runtime.manifest import CheckpointInfo

# The options a resume must match unless the user allows changes, and their flags.
DATA_OPTIONS = {"seed": "--seed", "batch": "the batch (--microbatches x --microbatch-size)",
                "lr": "--lr"}

__all__ = ["DATA_OPTIONS", "ModelSource", "TrainOptions", "TrainPlan"]


class ModelSource(Protocol):
    """What the trainer asks of a model: build it, feed it, score it, name it (docs/models.md).

    Optional, looked up with ``getattr``: ``count_tokens(targets) -> int`` (then ``loss``
    returns ``(sum, count)`` and the step's loss is the token mean over the batch) and
    ``layout(num_stages) -> tuple[int, ...]`` (layers per stage; default: as even as possible).
    A weight shared by two layers (a tied head) is found when the model is split.
    """

    @property
    def tokens_per_sample(self) -> int: ...

    def build(self) -> Any:
        """The unpartitioned model as a sequence of layers (``nn.Sequential``, a list or
        ``nn.ModuleList`` of modules), the same weights at every call."""
        ...

    def loss(self, output: Any, targets: Any) -> Any: ...

    def batch(self, size: int, step: int) -> tuple[Any, ...]:
        """``size`` samples of step ``step`` (the same on every rank): ``(inputs, targets)``
        or ``(inputs, targets, side)``, ``side`` a dict of named tensors split per microbatch
        and given to the layers that ask for them (attention masks, position ids)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded into this model."""
        ...

    def activation_shape(self, microbatch_size: int) -> tuple[int, ...]:
        """The tensor between stages, for emulated passes."""
        ...


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """How to train: every option that is not the schedule, the model or its layout."""

    steps: int = 10
    microbatch_size: int = 4
    lr: float = 3e-3
    seed: int = 0
    emulate_ms: float | None = None
    check_grads: bool = False
    memory: bool = False
    timeout: float = 60.0
    threads: int = 1
    save: str | None = None
    save_every: int | None = None
    dp: int = 1  # data-parallel replicas of the pipeline (DDP-style), docs/hybrid.md
    emulate_bandwidth: float = 1e8  # bytes/s of an emulated reduction's links (--dp)
    tp: int = 1  # tensor-parallel degree of each stage (runtime/tensor_parallel.py)
    emulate_link: float | None = None  # GB/s of the emulated host link (offload)
    dp_mode: str = "ddp"  # or "fsdp": FSDP2 fully_shard per stage (runtime/fsdp.py)
    reshard_after_forward: bool = True  # FSDP2's option
    fill: str | None = None  # runtime.fill_train.FILL_KINDS: work in the gaps (docs/fill.md)
    fill_ms: float = 5.0
    fill_count: int = 8
    fill_headroom_mb: float | None = None  # None: the rank's peak minus its use (fill_memory)


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """Everything a rank needs, checked once: the validated schedule, the model, its layout
    (parts per stage), the options and the checkpoint to resume from (or None)."""

    schedule: Schedule
    model: ModelSource
    layout: tuple[int, ...]
    options: TrainOptions
    name: str
    resume: CheckpointInfo | None = None

    def data_options(self) -> dict[str, Any]:
        """What changes the data or the math beside the model: stored in each checkpoint's
        manifest, and a resume must match it (see :data:`DATA_OPTIONS`). The batch is the
        global one: a resume on another data-parallel degree keeps it, not the replica's."""
        return {"seed": self.options.seed, "batch": self.global_batch_size,
                "lr": self.options.lr}

    @property
    def batch_size(self) -> int:
        """Samples per step and pipeline (one data-parallel replica)."""
        return self.schedule.spec.num_microbatches * self.options.microbatch_size

    @property
    def global_batch_size(self) -> int:
        """Samples per step over every data-parallel replica."""
        return self.batch_size * self.options.dp
