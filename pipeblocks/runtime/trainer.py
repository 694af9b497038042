"""The per-rank training program: a checked :class:`TrainPlan` in, a report out.

The command line (:mod:`pipeblocks.cli.train`) builds the plan once per process (schedule,
model, layout, options, the checkpoint to resume), refusing every bad option before any
communication; :func:`run_rank` then joins the process group (env://: gloo on CPU, NCCL with
CUDA), runs the steps and returns the report on rank 0. The model comes from a
:class:`ModelSource` (the small GPT's is :class:`pipeblocks.models.gpt.GPTSource`), so this
module knows no model.

Step time is the pipeline's makespan: from the earliest rank's start to the latest rank's end
(one clock on one host), after a barrier; the loss is the mean over the microbatches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import statistics
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeblocks.errors import PipeblocksError, SpecError
from pipeblocks.ir.hybrid import Mesh
from pipeblocks.runtime import checkpoint, fill_train
from pipeblocks.runtime.emulate_fsdp import emulated_fsdp, simulated_fsdp_ms
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.faults import Guard, RankFailure, post_fault, store_client, write_error
from pipeblocks.runtime.finite import (
    NonFiniteError,
    first_bad,
    non_finite_error,
    none,
    watch_outputs,
)
from pipeblocks.runtime.fsdp import FSDPReducer, dp_mesh
from pipeblocks.runtime.hybrid import (
    EmulatedReducer,
    GradReducer,
    MeshGroups,
    dp_slice,
    emulated_network,
    grad_bytes,
    mesh_groups,
)
from pipeblocks.runtime.offload import emulated_class, emulated_schedule, set_link
from pipeblocks.runtime.p2p import one_way_ms
from pipeblocks.runtime.plan import DATA_OPTIONS, ModelSource, TrainOptions, TrainPlan
from pipeblocks.runtime.split import layers_of, split
from pipeblocks.runtime.tensor_parallel import parallelize_stages
from pipeblocks.runtime.ties import unique_parameters
from pipeblocks.runtime.tree import call, flatten, unflatten, wanted_side
from pipeblocks.sim.hybrid import reduce_time

__all__ = ["DATA_OPTIONS", "ModelSource", "TrainOptions", "TrainPlan", "run_rank", "train",
           "build_model", "check_against_reference"]

OnStep = Callable[[dict[str, Any]], None]


def run_rank(plan: TrainPlan, on_step: OnStep | None = None) -> dict[str, Any]:
    """This process's rank of ``plan`` (RANK, WORLD_SIZE, LOCAL_RANK from the environment).

    ``on_step(row)`` is called on rank 0 after every step (``row``: step, ms, loss); the
    library prints nothing. Returns the report on rank 0 (``{}`` elsewhere). A failure stops every rank: this one
    writes one line with the cause and exits the process (1, or 2 for a usage error).
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.set_num_threads(plan.options.threads)
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model = build_model(plan, rank)  # before the group: a rank that cannot says so itself
    if world > 1 or "MASTER_PORT" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=timedelta(seconds=plan.options.timeout + 30))
    guard = Guard(rank, timeout=plan.options.timeout) if dist.is_initialized() else None
    try:
        groups = None
        if plan.options.dp > 1 or plan.options.tp > 1:
            groups = mesh_groups(Mesh.of(world, plan.options.dp, plan.options.tp))
        report = train(plan, device=device, guard=guard, on_step=on_step, model=model,
                       groups=groups)
    except NonFiniteError as e:  # every rank saw it in the same all-reduce: a clean stop
        _stop_non_finite(e, rank, guard)
        raise
    except Exception as e:
        _stop(rank, e, guard)
    if guard is not None:
        guard.stop()
    if dist.is_initialized():
        dist.destroy_process_group()
    return report


def _stop(rank: int, e: Exception, guard: Guard | None) -> None:
    """Write this rank's one line and leave the process (the group may wait on a dead peer)."""
    message = str(e)
    if not isinstance(e, RankFailure | OutOfMemory):  # outside a pass: stop the others now
        text = (str(e).strip().splitlines() or [""])[0][:300]
        message = f"rank {rank} failed: {type(e).__name__}: {text}"
        if guard is not None:
            # A transport error here (the barrier or all-reduce between steps) usually means a
            # peer died: as the executor does, report the root cause the launcher posts within
            # 2 s rather than this rank's "connection reset".
            cause = guard.root_cause(message)  # (or a frozen rank: see faults)
            if cause != message:
                message = f"rank {rank} stops in {guard.where}: {cause}"
    code = 2 if isinstance(e, SpecError) else 1
    if guard is not None:
        # the pause lets the other guards read a fault this rank just posted
        guard.report(message, code, linger=5 * guard.poll)
    write_error(message)
    os._exit(code)


def _stop_non_finite(e: NonFiniteError, rank: int, guard: Guard | None) -> None:
    """Every rank leaves the group together; rank 0 posts the cause as the run's fault (the
    launcher's last line) once every guard is off. The caller reports it and exits 1."""
    if guard is not None:
        guard.stop()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0 and guard is not None:
        post_fault(guard.store, str(e))


class OutOfMemory(PipeblocksError):
    """A rank could not build its model: the message names the rank and the size it tried."""


def _out_of_memory(e: RuntimeError, rank: int, model: ModelSource) -> OutOfMemory:
    """One line for a model too large to build, posted as the run's fault for the launcher's
    last line; any other error is raised as it was."""
    text = str(e)
    if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in text:
        raise e
    got = re.search(r"allocate (\d+) bytes", text)  # CPU; CUDA says "20.00 GiB"
    cuda = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", text)
    size = f"{int(got.group(1)) / 2**30:,.1f} GiB" if got else cuda.group(1) if cuda else "?"
    sizes = ", ".join(f"{k} {v}" for k, v in model.describe().items())
    message = (f"rank {rank} ran out of memory building the model: it tried to allocate "
               f"{size} ({sizes}); use smaller sizes")
    if "MASTER_PORT" in os.environ:
        post_fault(store_client(10.0), message)
    return OutOfMemory(message)


def build_model(plan: TrainPlan, rank: int) -> Any:
    """The whole model (every rank builds it, from the same seed); a model too large to build
    is an :class:`OutOfMemory` naming the rank and the size it tried."""
    try:
        return plan.model.build()
    except RuntimeError as e:  # torch.OutOfMemoryError is one too
        raise _out_of_memory(e, rank, plan.model) from None


def train(plan: TrainPlan, *, device: torch.device, guard: Guard | None = None,
          on_step: OnStep | None = None, model: Any = None,
          groups: MeshGroups | None = None) -> dict[str, Any]:
    """Run the plan's steps on this rank (the process group, if any, is initialised);
    ``model``: the plan's model already built (:func:`build_model`), else built here;
    ``groups``: this rank's mesh groups when the pipeline is replicated."""
    opts, spec = plan.options, plan.schedule.spec
    rank = dist.get_rank() if dist.is_initialized() else 0
    if groups is not None:
        rank = groups.coords[1]  # the pipeline rank
    if model is None:
        model = build_model(plan, rank)
    parts = split(model, spec.num_stages, plan.layout)
    mine: dict[int, nn.Module] = {s: parts[s] for s in spec.stages_of(rank)}
    ex, opt = _executor(plan, mine, device, guard, groups)
    fill, on = fill_train.from_plan(plan, ex, device), []
    first = 0
    run = uuid.uuid4().hex[:12]  # a fresh run's name; a resumed run keeps its checkpoint's
    if plan.resume is not None:
        _where(guard, "loading the checkpoint")
        first, run = checkpoint.load(plan.resume, mine, opt, guard), plan.resume.run
    flags = watch_outputs(mine, device) if opts.emulate_ms is None else {}
    names = {id(p): n for n, p in _named(model)}
    # emulation compares with the simulator, which needs the transfer time (all ranks probe)
    comm = None if opts.emulate_ms is None else one_way_ms(
        plan.model.activation_shape(opts.microbatch_size), 25, device)
    steps: list[dict[str, Any]] = []
    grads: dict[str, torch.Tensor] = {}
    peak = 0
    for step in range(first, opts.steps):
        on.append(fill is not None and fill.before_step(ex, step, [
            s["ms"] for s, f in zip(steps[1:], on[1:], strict=False) if not f]))
        row, res = _step(plan, ex, step, device, guard, (mine, flags), steps, groups)
        steps.append(row)
        peak = max(peak, res.peak_activation_bytes)
        if step == 0 and opts.check_grads:
            grads = {names[id(p)]: _full(p.grad).detach().cpu().clone()
                     for mod in mine.values() for p in mod.parameters() if p.grad is not None}
        if rank == 0 and on_step is not None:
            on_step(row)
        if opts.save and (step + 1 == opts.steps or (
                opts.save_every and (step + 1) % opts.save_every == 0)):
            _where(guard, f"saving the checkpoint of step {step + 1}")
            checkpoint.save(opts.save, step + 1, mine, opt, layout=plan.layout,
                            model=plan.model.describe(), schedule=plan.schedule.name, run=run,
                            options=plan.data_options(), guard=guard)
    report = _report(plan, steps, first, peak, grads, comm)
    return report | (fill.finish(steps, on) if fill is not None else {})


def _executor(plan: TrainPlan, mine: dict[int, nn.Module], device: torch.device,
              guard: Guard | None, groups: MeshGroups | None = None
              ) -> tuple[Executor, torch.optim.Optimizer | None]:
    opts, spec = plan.options, plan.schedule.spec
    mesh: dict[str, Any] = {}
    if groups is not None:
        full = None if opts.tp == 1 else parallelize_stages(mine, groups.mesh, device, plan.model)
        mesh = {"group": groups.pipeline, "rank": groups.coords[1],
                "reducer": GradReducer(mine, groups.dp, groups.mesh.dp)}
        if opts.dp_mode == "fsdp" and opts.emulate_ms is None:
            for mod in mine.values():
                mod.to(device)
            mesh["reducer"] = FSDPReducer(mine, dp_mesh(groups.mesh, device.type) if full is None
                                          else full["dp"], opts.reshard_after_forward)
        if opts.emulate_ms is not None:
            net, dp = emulated_network(opts.emulate_bandwidth), groups.mesh.dp
            mesh["reducer"] = EmulatedReducer({s: reduce_time(
                grad_bytes(m), dp=dp, network=net, stride=spec.num_ranks)
                for s, m in mine.items()})
    if opts.emulate_ms is not None:
        shape = plan.model.activation_shape(opts.microbatch_size)
        runners: dict[int, Any] = {
            s: emulated_class(plan.schedule, s)(s, spec.num_stages, opts.emulate_ms, shape,
                                                device=device) for s in mine}
        set_link(runners, opts.emulate_link)  # offload: runtime/offload.py
        if groups is not None and opts.dp_mode == "fsdp":  # runtime/emulate_fsdp.py
            mesh["reducer"], runners = emulated_fsdp(  # type: ignore[assignment]
                plan.schedule, mine, opts.emulate_ms, shape, device, dp=groups.mesh.dp,
                bandwidth=opts.emulate_bandwidth, reshard_after_forward=opts.reshard_after_forward)
        return Executor(plan.schedule, runners, None, None, guard=guard, device=device,
                        **mesh), None
    for mod in mine.values():
        mod.to(device)
    params = unique_parameters(mine.values())  # a weight tied on this rank is stepped once
    opt = torch.optim.Adam(params, lr=opts.lr) if params else None  # FSDP: the shards
    reducer = mesh.get("reducer")
    with reducer.gathered() if isinstance(reducer, FSDPReducer) else contextlib.nullcontext():
        ex = Executor(plan.schedule, mine, plan.model.loss, opt, guard=guard, device=device,
                      measure_memory=opts.memory,
                      count_tokens=getattr(plan.model, "count_tokens", None), **mesh)
    set_link(ex.runners, opts.emulate_link)
    return ex, opt


def _step(plan: TrainPlan, ex: Executor, step: int, device: torch.device, guard: Guard | None,
          watch: tuple[dict[int, nn.Module], dict[int, torch.Tensor]],
          steps: list[dict[str, Any]], groups: MeshGroups | None = None
          ) -> tuple[dict[str, Any], Any]:
    inputs, targets, side = _batch(plan, step, device)
    if groups is not None:  # this replica's slice of the global batch
        d, dp = groups.coords[0], groups.mesh.dp
        inputs, targets, side = (dp_slice(x, d, dp) for x in (inputs, targets, side))
    if dist.is_initialized():
        with _waiting(guard, f"the barrier before step {step + 1}"):
            dist.barrier()
    res = ex.step(inputs, targets, side=side)
    # one clock on one host: the makespan is the latest end minus the earliest start; and the
    # first non-finite value of the step (the smallest key of first_bad, negated for MAX)
    S = plan.schedule.spec.num_stages
    bad = first_bad(*watch, res.losses, S)
    loss_in = res.loss if res.loss is not None and bad == none(S) else -math.inf
    t = torch.tensor([-res.start, res.end, loss_in, -bad], dtype=torch.float64, device=device)
    if dist.is_initialized():
        with _waiting(guard, f"the all-reduce after step {step + 1}"):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if -int(t[3]) < none(S):
        raise non_finite_error(-int(t[3]), step + 1, S, stage_rank=plan.schedule.spec.rank_of,
                               lr=plan.options.lr, save=plan.options.save,
                               losses=[s["loss"] for s in steps])
    ms = (float(t[0]) + float(t[1])) * 1e3
    # emulated passes compute no loss
    ok = math.isfinite(float(t[2])) and plan.options.emulate_ms is None
    loss = float(t[2])
    if groups is not None and ok:  # the global batch's mean: average the replicas' losses
        lt = torch.tensor([res.loss if res.loss is not None else 0.0], dtype=torch.float64,
                          device=device)
        dist.all_reduce(lt)
        loss = float(lt[0]) / (groups.mesh.dp * groups.mesh.tp)  # tp ranks: the same loss
    return {"step": step + 1, "ms": ms, "loss": loss if ok else None}, res


def _waiting(guard: Guard | None, what: str) -> contextlib.AbstractContextManager[None]:
    """A collective between steps, timed by the guard like a message (``--timeout``)."""
    if guard is None:
        return contextlib.nullcontext()
    guard.where = what
    return guard.waiting("every rank")


def _report(plan: TrainPlan, steps: list[dict[str, Any]], first: int, peak: int,
            grads: dict[str, torch.Tensor], comm_ms: float | None) -> dict[str, Any]:
    """Rank 0's report (gathers every rank's peak memory and gradients); ``{}`` elsewhere."""
    opts, spec = plan.options, plan.schedule.spec
    rank = dist.get_rank() if dist.is_initialized() else 0
    gathered: list[Any] = [(rank, peak, grads)]
    if dist.is_initialized():
        gathered = [None] * dist.get_world_size() if rank == 0 else []
        dist.gather_object((rank, peak, grads), gathered if rank == 0 else None, dst=0)
    if rank != 0:
        return {}
    step_ms = [s["ms"] for s in steps]
    median = statistics.median(step_ms)
    report: dict[str, Any] = {
        "status": "ok",
        "schedule": plan.name,
        "ranks": spec.num_ranks * opts.dp * opts.tp,
        "dp": opts.dp,
        "tp": opts.tp,
        "pp": spec.num_ranks,
        "microbatches": spec.num_microbatches,
        "stages_per_rank": spec.stages_per_rank,
        "placement": spec.placement.value,
        "steps": opts.steps,
        "first_step": first + 1,
        "backend": dist.get_backend() if dist.is_initialized() else "none",
        "step_ms": step_ms,
        "step_ms_median": median,
        "tokens_per_s": plan.global_batch_size * plan.model.tokens_per_sample / (median / 1e3),
        "loss": [s["loss"] for s in steps],
    }
    if opts.memory:
        report["peak_activation_bytes"] = [g[1] for g in sorted(gathered, key=lambda g: g[0])]
    if opts.check_grads:
        every = {k: g for _, _, gs in gathered for k, g in gs.items()}
        report.update(check_against_reference(plan, every, steps[0]["loss"]))
    if opts.emulate_ms is not None:
        report.update(_emulation(plan, median, comm_ms or 0.0))
    return report


def _batch(plan: TrainPlan, step: int, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """Step ``step``'s inputs, targets and side inputs (``{}`` if none) on ``device``."""
    got = plan.model.batch(plan.global_batch_size, step)
    side = got[2] if len(got) > 2 else {}
    return (_to(got[0], device), _to(got[1], device),
            {k: _to(v, device) for k, v in side.items()})


def _to(obj: Any, device: torch.device) -> Any:
    leaves, structure = flatten(obj, "the batch")
    return unflatten(structure, [t.to(device) for t in leaves])


def check_against_reference(plan: TrainPlan, grads: dict[str, torch.Tensor],
                            loss: float | None) -> dict[str, Any]:
    """The unpartitioned model on step 1's batch, in this process: the largest differences.

    Its layers run in order with plain autograd, called as the stages call them (the side
    inputs to the layers that ask); the loss is over the whole batch (a token mean when the
    model counts tokens)."""
    ref = plan.model.build()
    inputs, targets, side = _batch(plan, 0, torch.device("cpu"))
    h = inputs
    for layer in layers_of(ref):
        h = call(layer, h, side, wanted_side(layer, list(side)))
    ref_loss = plan.model.loss(h, targets)
    if isinstance(ref_loss, tuple):
        ref_loss = ref_loss[0] / ref_loss[1]
    ref_loss.backward()
    want = {n: p.grad for n, p in _named(ref) if p.grad is not None}
    first = {id(p): n for n, p in _named(ref)}  # a tied weight by its first name, as above
    whole = ref if isinstance(ref, nn.Module) else nn.ModuleList(ref)
    alias = {n: first[id(p)] for n, p in whole.named_parameters(remove_duplicate=False)}
    grads = {alias.get(n, n): g for n, g in grads.items()}  # FSDP2 unties the rank's copies
    if set(want) != set(grads):
        missing = sorted(set(want) ^ set(grads))[:3]
        raise PipeblocksError(f"--check-grads: the pipeline and the reference differ in which "
                              f"parameters have gradients (e.g. {missing})")
    diff = max(float((grads[n] - g).abs().max()) for n, g in want.items())
    return {"grad_max_abs_diff": diff,
            "loss_abs_diff": abs(loss - ref_loss.item()) if loss is not None else None,
            "reference_loss": ref_loss.item()}


def _emulation(plan: TrainPlan, median_ms: float, comm: float) -> dict[str, Any]:
    """The simulated makespan of the emulated run, with the measured one-way transfer time."""
    from pipeblocks.sim import UniformCosts, simulate
    from pipeblocks.sim.hybrid import simulate_data_parallel

    x, v = plan.options.emulate_ms, plan.schedule.spec.stages_per_rank
    assert x is not None
    # UniformCosts times are per rank and divided by v per stage: pass x * v so that every
    # stage pass takes x ms, as the emulated stages sleep
    costs = UniformCosts(f=x * v, b=x * v, w=x * v, comm=comm)
    makespan = simulate(emulated_schedule(plan), costs).makespan  # offload: its emulated link
    if plan.options.dp > 1:  # with each stage's all-reduce (what the EmulatedReducer sleeps)
        spec = plan.schedule.spec
        parts = split(plan.model.build(), spec.num_stages, plan.layout)
        makespan = simulated_fsdp_ms(
            plan.schedule, costs, parts, dp=plan.options.dp, bandwidth=plan.options.
            emulate_bandwidth, reshard_after_forward=plan.options.reshard_after_forward
        ) if plan.options.dp_mode == "fsdp" else simulate_data_parallel(
            plan.schedule, costs, grad_bytes=[grad_bytes(m) for m in parts],
            dp=plan.options.dp, network=emulated_network(plan.options.emulate_bandwidth),
            seconds_per_unit=1e-3).makespan
    return {"emulate_ms": x, "comm_ms": comm, "simulated_ms": makespan,
            "measured_over_simulated": median_ms / makespan}


def _named(model: Any) -> Any:
    """Parameter names of the whole model (a list of layers named by position)."""
    return (model if isinstance(model, nn.Module) else nn.ModuleList(model)).named_parameters()


def _full(t: torch.Tensor) -> torch.Tensor:
    """A gradient whole: an FSDP2 shard (a DTensor) gathered over its group (collective).
    DTensor's note that a 2-D gather takes two all-gathers is silenced: a check, not a hot path."""
    full = getattr(t, "full_tensor", None)
    if full is None:
        return t
    note = logging.getLogger("torch.distributed.tensor._redistribute")
    level, note.level = note.level, logging.ERROR
    try:
        return full()
    finally:
        note.setLevel(level)


def _where(guard: Guard | None, what: str) -> None:
    if guard is not None:
        guard.where = what


