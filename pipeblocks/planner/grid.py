"""The grid: every dp x tp x pp layout, microbatch size, schedule, recompute and sharding
choice, timed and sized, ranked.

For one plan (docs/planner.md has the formulas and their sources):

- a layer's F, B, W take their FLOPs / t / (peak FLOP/s x efficiency), plus, with t > 1, two
  all-reduce-sized collectives in F and two in B (sequence parallelism's all-gather and
  reduce-scatter around attention and the MLP); full recompute adds F to B;
- the stage split balances the head's time (:mod:`~pipeblocks.planner.partition`); the step is
  the simulator's makespan (:mod:`~pipeblocks.planner.pipeline`) plus the data-parallel gradient
  collectives, which are not overlapped (a pessimistic bound);
- memory per GPU, per pipeline rank: weights (2 bytes a parameter), gradients (4, fp32
  accumulation) and Adam states (12: fp32 master, m, v), sharded over dp by ``zero1``
  (states) or ``fsdp`` (all three, plus two gathered layers); the schedule's activation peak
  from the simulator; one layer's full activations with recompute (the layer being
  recomputed); four transfer buffers; the cluster's reserved bytes. The largest rank decides.

    >>> from pipeblocks.planner.model import parse_model
    >>> from pipeblocks.planner.cluster import Cluster
    >>> gpt = parse_model("layers=24,hidden=2048,heads=16,seq=2048,vocab=50304")
    >>> plans = evaluate(gpt, Cluster(gpus=8), global_batch=64, space=Space(tp=(1,), pp=(4,)))
    >>> best = plans[0]
    >>> best.fits, best.tp, best.pp, best.dp
    (True, 1, 4, 2)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pipeblocks.errors import SpecError
from pipeblocks.generators import get
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import Placement
from pipeblocks.planner.cluster import Cluster
from pipeblocks.planner.model import ModelSpec
from pipeblocks.planner.partition import partition, stage_ranks
from pipeblocks.planner.pipeline import PipelineCache, StageCosts, round2, search_budget

__all__ = ["Plan", "Space", "evaluate", "layout_of", "schedule_of", "PLAN_SCHEDULES", "SHARDINGS", "Progress"]

log = logging.getLogger(__name__)

PLAN_SCHEDULES = ("1f1b", "interleaved-1f1b", "zb-h1", "zb-h2", "zb-v", "v-zb", "v-half",
                  "v-min")
SHARDINGS = ("none", "zero1", "fsdp")
# bytes per parameter: 16-bit weights, fp32 gradients, fp32 Adam (master copy, m, v)
WEIGHT, GRAD, OPTIM = 2.0, 4.0, 12.0

Progress = Callable[[int, int], None]
_FBW = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Space:
    """What the grid tries; None means every valid value.

    ``search_budgets``: after the grid, the memory-limited search (``search@B``, V schedules
    within B times 1F1B's peak) is tried on the ``search_shapes`` fastest distinct layouts
    that have a plan within 1.25 times the GPU memory (a layout that just misses with a named
    schedule may fit with a searched one). ``schedules`` may name ``search@B`` too: then
    every layout tries it.
    """

    schedules: tuple[str, ...] = PLAN_SCHEDULES
    tp: tuple[int, ...] | None = None
    pp: tuple[int, ...] | None = None
    microbatch_sizes: tuple[int, ...] | None = None
    recompute: tuple[bool, ...] = (False, True)
    sharding: tuple[str, ...] = SHARDINGS
    search_budgets: tuple[float, ...] = (0.6,)
    search_shapes: int = 4

    def __post_init__(self) -> None:
        for name in self.schedules:
            layout_of(name)
        for b in self.search_budgets:
            search_budget(f"search@{b:g}")
        for s in self.sharding:
            if s not in SHARDINGS:
                raise SpecError(f"unknown sharding {s!r}; use one of {', '.join(SHARDINGS)}")


@dataclass(frozen=True, slots=True)
class Plan:
    """One point of the grid, timed and sized."""

    schedule: str
    dp: int
    tp: int
    pp: int
    microbatch_size: int
    num_microbatches: int
    recompute: bool
    sharding: str
    peak_memory_bytes: float
    fits: bool
    samples_per_s: float
    mfu: float
    step_time_s: float
    bubble_rate: float
    layers_per_stage: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["layers_per_stage"] = list(self.layers_per_stage)
        return d


def layout_of(name: str) -> tuple[int, Placement]:
    """Stages per rank and placement of a schedule name (``search@B``: V, two per rank)."""
    if search_budget(name) is not None:
        return 2, Placement.V
    gen = get(name)
    return gen.stages_per_rank, gen.placement


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a plan's time and memory need besides its schedule and sharding."""

    tp: int
    pp: int
    dp: int
    mbs: int
    m: int
    recompute: bool


class _Evaluator:
    def __init__(self, model: ModelSpec, cluster: Cluster, global_batch: int) -> None:
        self.model, self.cluster, self.batch = model, cluster, global_batch
        self.cache = PipelineCache()

    def layer_times(self, sh: _Shape) -> tuple[_FBW, _FBW, _FBW, float]:
        """Seconds of one layer's, the head's and the embedding's F, B, W; one transfer's."""
        md, cl, net = self.model, self.cluster, self.cluster.network
        tokens = sh.mbs * md.seq
        eff = cl.efficiency(2.0 * tokens * md.hidden * md.f / sh.tp)
        rate = cl.flops * eff
        if md.measured is None:
            f, b, w = (x / sh.tp / rate for x in md.layer_flops(tokens))
            head = (md.head_flops(tokens) / sh.tp / rate,) * 3
            emb = (0.0, 0.0, 0.0)
        else:  # measured at (b0, t = 1): scaled by the FLOPs model's ratio
            ms = md.measured
            at_b0 = cl.efficiency(2.0 * ms.microbatch_size * md.seq * md.hidden * md.f)
            r = sh.mbs / ms.microbatch_size / sh.tp * at_b0 / eff
            f, b, w = (x * r for x in ms.layer[:3])
            head = (ms.head[0] * r, ms.head[1] * r, ms.head[2] * r)
            emb = (ms.embedding[0] * r, ms.embedding[1] * r, ms.embedding[2] * r)
        act_bytes = float(md.act_bytes * tokens * md.hidden)  # one activation or gradient
        if sh.tp > 1:
            tp_comm = 2 * net.all_reduce(act_bytes, sh.tp)
            f, b = f + tp_comm, b + tp_comm
        if sh.recompute:
            b += f
        link = net.link(sh.pp, sh.tp * sh.dp)
        comm = link.latency + act_bytes / sh.tp / link.bandwidth if sh.pp > 1 else 0.0
        return (f, b, w), head, emb, comm

    def stage_costs(self, name: str, sh: _Shape) -> tuple[StageCosts, float, tuple[int, ...]]:
        """Per-stage costs in layer units, the layer unit in seconds, the layers per stage."""
        (f, b, w), head, emb, comm = self.layer_times(sh)
        unit = f + b + w
        v, place = layout_of(name)
        num_stages = sh.pp * v
        hd = [round2(x / unit) for x in head]
        em = [round2(x / unit) for x in emb]
        extra = {num_stages - 1: sum(hd)}
        extra[0] = extra.get(0, 0.0) + sum(em)
        counts = partition(self.model.layers, sh.pp, stages_per_rank=v, placement=place,
                           layer=1.0, extra=extra)
        rf, rb = round(f / unit, 2), round(b / unit, 2)
        rw = round(1.0 - rf - rb, 2)
        md = self.model
        mf, mw = md.layer_activation(1.0, recompute=sh.recompute)
        hf, hw = md.head_activation(1.0)
        ef, ew = md.embedding_activation(1.0)
        last = [0.0] * (num_stages - 1) + [1.0]
        first = [1.0] + [0.0] * (num_stages - 1)

        def per_stage(r: float, h: float, e: float) -> tuple[float, ...]:
            return tuple(n * r + z * h + a * e
                         for n, z, a in zip(counts, last, first, strict=True))

        costs = StageCosts(
            f=per_stage(rf, hd[0], em[0]), b=per_stage(rb, hd[1], em[1]),
            w=per_stage(rw, hd[2], em[2]),
            mem_f=per_stage(1.0, round2(hf / mf), round2(ef / mf)),
            mem_w=per_stage(round2(mw / mf), round2(hw / mf), round2(ew / mf)),
            comm=round2(comm / unit) if comm else 0.0,
        )
        return costs, unit, counts

    def plans(self, name: str, sh: _Shape, shardings: tuple[str, ...]) -> list[Plan]:
        if self.model.layers < sh.pp * layout_of(name)[0]:
            return []
        costs, unit, counts = self.stage_costs(name, sh)
        run = self.cache.run(name, sh.pp, sh.m, costs)
        if run is None:
            return []
        md, cl = self.model, self.cluster
        tokens = sh.mbs * md.seq
        layer_act = md.layer_activation(tokens, recompute=sh.recompute)[0] / sh.tp
        transient = 4.0 * md.act_bytes * tokens * md.hidden / sh.tp  # p2p send, recv buffers
        if sh.recompute:
            transient += md.layer_activation(tokens, recompute=False)[0] / sh.tp
        params = self._rank_params(name, sh, counts)
        pipeline_s = run.makespan * unit
        flops = self.batch * md.flops_per_sequence()
        out = []
        for shard in shardings if sh.dp > 1 else ("none",):  # nothing to shard over one
            static, dp_s = self._sharded(shard, sh, params)
            peak = max(st + pk * layer_act for st, pk in zip(static, run.peaks, strict=True))
            peak += transient + cl.reserved
            step = pipeline_s + dp_s
            out.append(Plan(
                name, sh.dp, sh.tp, sh.pp, sh.mbs, sh.m, sh.recompute, shard, peak,
                peak <= cl.gpu_memory, self.batch / step, flops / (step * cl.gpus * cl.flops),
                step, run.bubble_rate, counts,
            ))
        return out

    def _rank_params(self, name: str, sh: _Shape, counts: tuple[int, ...]) -> list[float]:
        """Parameters on each pipeline rank (one tensor-parallel shard)."""
        ranks = stage_ranks(sh.pp, *layout_of(name))
        md = self.model
        params = [0.0] * sh.pp
        for s, (n, r) in enumerate(zip(counts, ranks, strict=True)):
            params[r] += n * md.layer_params()
            params[r] += md.embedding_params() if s == 0 else 0.0
            params[r] += md.head_params() if s == len(counts) - 1 else 0.0
        return [p / sh.tp for p in params]

    def _sharded(self, shard: str, sh: _Shape, params: list[float]) -> tuple[list[float], float]:
        """Static bytes per pipeline rank and the data-parallel collectives' seconds."""
        net, dp, stride = self.cluster.network, sh.dp, sh.tp
        most = max(params)
        if shard == "none":
            return [p * (WEIGHT + GRAD + OPTIM) for p in params], net.all_reduce(
                GRAD * most, dp, stride)
        if shard == "zero1":
            static = [p * (WEIGHT + GRAD + OPTIM / dp) for p in params]
            return static, net.reduce_scatter(GRAD * most, dp, stride) + net.all_gather(
                WEIGHT * most, dp, stride)
        gathered = 2 * WEIGHT * self.model.layer_params() / sh.tp
        static = [p * (WEIGHT + GRAD + OPTIM) / dp + gathered for p in params]
        gathers = 2 * sh.m * net.all_gather(WEIGHT * most, dp, stride)
        return static, gathers + net.reduce_scatter(GRAD * most, dp, stride)


def _shapes(model: ModelSpec, cluster: Cluster, batch: int, space: Space) -> list[_Shape]:
    out = []
    for tp in space.tp or _divisors(min(cluster.gpus, cluster.gpus_per_node)):
        if cluster.gpus % tp or model.heads % tp or (model.kv_heads or model.heads) % tp:
            continue
        for pp in space.pp or _divisors(cluster.gpus // tp):
            if (cluster.gpus // tp) % pp or pp > model.layers:
                continue
            dp = cluster.gpus // (tp * pp)
            if batch % dp:
                continue
            for mbs in space.microbatch_sizes or _divisors(batch // dp):
                if (batch // dp) % mbs:
                    continue
                for rc in space.recompute:
                    out.append(_Shape(tp, pp, dp, mbs, batch // (dp * mbs), rc))
    return out


def evaluate(
    model: ModelSpec,
    cluster: Cluster,
    global_batch: int,
    space: Space | None = None,
    progress: Progress | None = None,
) -> list[Plan]:
    """Every plan of ``space``, ranked: plans that fit first, fastest first."""
    space = space or Space()
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise SpecError(f"global batch must be an integer >= 1 (got {global_batch!r})")
    shapes = _shapes(model, cluster, global_batch, space)
    if not shapes:
        raise SpecError(
            f"no dp x tp x pp layout of {cluster.gpus} GPUs divides the global batch "
            f"{global_batch} and the model (heads={model.heads}, layers={model.layers}); "
            f"use a global batch that is a multiple of the GPU count")
    ev = _Evaluator(model, cluster, global_batch)
    plans: list[Plan] = []
    for i, sh in enumerate(shapes):
        names = space.schedules if sh.pp > 1 else space.schedules[:1]
        for name in names:
            plans.extend(ev.plans(name, sh, space.sharding))
        if progress:
            progress(i + 1, len(shapes) + 1)
    plans.sort(key=_rank)
    plans.extend(_searched(ev, plans, space))  # the last step of the progress bar
    if progress:
        progress(len(shapes) + 1, len(shapes) + 1)
    log.info("%d plans, %d simulations", len(plans), ev.cache.simulations)
    plans.sort(key=_rank)
    return plans


def schedule_of(model: ModelSpec, cluster: Cluster, global_batch: int, plan: Plan) -> Schedule:
    """The schedule a plan runs: generated, or searched again with the plan's stage costs."""
    ev = _Evaluator(model, cluster, global_batch)
    sh = _Shape(plan.tp, plan.pp, plan.dp, plan.microbatch_size, plan.num_microbatches,
                plan.recompute)
    costs = ev.stage_costs(plan.schedule, sh)[0]
    sched = ev.cache.schedule(plan.schedule, plan.pp, plan.num_microbatches, costs)
    if sched is None:
        raise SpecError(f"{plan.schedule} cannot be built for pp={plan.pp}, "
                        f"m={plan.num_microbatches}; pick another plan")
    return sched


def _rank(p: Plan) -> tuple[bool, float, float]:
    return (not p.fits, -p.samples_per_s, p.peak_memory_bytes)


def _searched(ev: _Evaluator, plans: list[Plan], space: Space) -> list[Plan]:
    """``search@B`` plans on the fastest distinct layouts (pp > 1) of the grid."""
    shapes: list[_Shape] = []
    near = 1.25 * ev.cluster.gpu_memory
    for p in sorted(plans, key=lambda p: -p.samples_per_s):
        sh = _Shape(p.tp, p.pp, p.dp, p.microbatch_size, p.num_microbatches, p.recompute)
        if p.pp > 1 and p.peak_memory_bytes <= near and sh not in shapes:
            shapes.append(sh)
        if len(shapes) >= space.search_shapes:
            break
    out = []
    for sh in shapes:
        for b in space.search_budgets:
            out.extend(ev.plans(f"search@{b:g}", sh, space.sharding))
    return out
