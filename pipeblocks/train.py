"""The per-rank training program: ``torchrun --nproc-per-node P -m pipeblocks.train ...``.

Each rank builds the schedule and the small GPT (the same weights everywhere, from the seed),
keeps its own stages, joins the process group (env://: gloo on CPU, NCCL with CUDA), and runs
``--steps`` executor steps on synthetic data. Rank 0 prints a line per step (loss, step time,
tokens/s) or, with ``--json``, one JSON object at the end. ``pipeblocks train --ranks P``
starts P of these itself. Options: ``python -m pipeblocks.train --help``.

Step time is the pipeline's makespan: from the earliest rank's start to the latest rank's end
(one clock on one host), after a barrier; the loss is the mean over the microbatches.

    $ torchrun --nproc-per-node 4 -m pipeblocks.train --schedule 1f1b --microbatches 8
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeblocks.cli.train import add_train_args
from pipeblocks.errors import PipeblocksError, SpecError
from pipeblocks.ir import Schedule, validate
from pipeblocks.models.gpt import GPTConfig, TinyGPT, lm_loss, synthetic_batch
from pipeblocks.models.split import ends_layout, split
from pipeblocks.runtime import checkpoint
from pipeblocks.runtime.emulate import EmulatedStage
from pipeblocks.runtime.executor import Executor
from pipeblocks.runtime.faults import Guard, RankFailure, post_fault, store_client, write_error
from pipeblocks.runtime.finite import (
    NonFiniteError,
    first_bad,
    non_finite_error,
    none,
    watch_outputs,
)
from pipeblocks.runtime.p2p import one_way_ms

__all__ = ["main", "build_parser", "check_args", "load_schedule", "model_config", "layout_of",
           "data_options"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeblocks.train",
        description="One pipeline rank (start P of them with torchrun or `pipeblocks train`).",
    )
    add_train_args(p, ranks_required=False)
    return p


def load_schedule(args: argparse.Namespace, num_ranks: int) -> Schedule:
    """The schedule named by ``--schedule`` or read from ``--schedule-file``, validated."""
    if args.schedule is not None:
        if args.microbatches is None:
            raise SpecError("--microbatches is required with --schedule; e.g. --microbatches 8")
        from pipeblocks.generators import generate

        schedule = generate(args.schedule, num_ranks, args.microbatches, args.stages_per_rank)
    else:
        from pipeblocks.ir.formats import load

        options: dict[str, Any] = {}
        if args.stages_per_rank is not None:
            options["stages_per_rank"] = args.stages_per_rank
        if args.microbatches is not None:
            options["num_microbatches"] = args.microbatches
        schedule = load(args.schedule_file, **options)
        if schedule.spec.num_ranks != num_ranks:
            raise SpecError(
                f"{args.schedule_file} is a schedule for {schedule.spec.num_ranks} ranks but "
                f"{num_ranks} were asked for; use --ranks {schedule.spec.num_ranks}"
            )
    validate(schedule)
    return schedule


def model_config(args: argparse.Namespace, num_stages: int) -> GPTConfig:
    """The small GPT's sizes; by default the smallest multiple of the stage count >= 8 blocks."""
    layers = args.layers or num_stages * math.ceil(8 / num_stages)
    if args.dim % args.heads:
        raise SpecError(f"--dim must be a multiple of --heads (got {args.dim} and {args.heads})")
    return GPTConfig(vocab=args.vocab, seq=args.seq, dim=args.dim, heads=args.heads,
                     layers=layers)


def layout_of(args: argparse.Namespace, cfg: GPTConfig, num_stages: int) -> tuple[int, ...]:
    """Parts per stage: ``--layout`` blocks (plus embedding and head) or an even spread."""
    if args.layout is None:
        return ends_layout(cfg.layers, num_stages)
    try:
        blocks = [int(x) for x in args.layout.split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"--layout {args.layout!r} is not a comma-separated list of integers") from None
    if len(blocks) != num_stages:
        raise SpecError(
            f"--layout gives {len(blocks)} stages but the schedule has {num_stages} "
            f"(p * v); give {num_stages} block counts"
        )
    if sum(blocks) != cfg.layers or min(blocks) < 0:
        raise SpecError(f"--layout {args.layout} must be >= 0 per stage and sum to the "
                        f"{cfg.layers} blocks (--layers)")
    counts = list(blocks)
    counts[0] += 1  # the embedding
    counts[-1] += 1  # the head (and the loss)
    return tuple(counts)


def check_args(args: argparse.Namespace, world: int | None = None) -> Schedule:
    """Every check that needs no process group: the schedule, the model and its split."""
    num_ranks = args.ranks or world
    if num_ranks is None:
        raise SpecError("give --ranks P (or start under torchrun, which sets WORLD_SIZE)")
    if world is not None and num_ranks != world:
        raise SpecError(f"--ranks {num_ranks} but {world} processes were started; "
                        f"start {num_ranks} (torchrun --nproc-per-node {num_ranks})")
    if args.emulate_ms is not None and args.check_grads:
        raise SpecError("--check-grads needs real passes; drop --emulate-ms")
    schedule = load_schedule(args, num_ranks)
    cfg = model_config(args, schedule.spec.num_stages)
    layout = layout_of(args, cfg, schedule.spec.num_stages)
    _check_checkpoint_args(args, cfg, layout, schedule)
    return schedule


# What changes the data or the math: a resume must match it unless --allow-changes.
_OPTIONS = {"seed": "--seed", "batch": "the batch (--microbatches x --microbatch-size)",
            "lr": "--lr"}


def data_options(args: argparse.Namespace, schedule: Schedule) -> dict[str, Any]:
    """The values of :data:`_OPTIONS` for this run (stored in each checkpoint's manifest)."""
    batch = schedule.spec.num_microbatches * args.microbatch_size
    return {"seed": args.seed, "batch": batch, "lr": args.lr}


def _check_checkpoint_args(args: argparse.Namespace, cfg: GPTConfig,
                           layout: tuple[int, ...], schedule: Schedule) -> None:
    """--save / --save-every / --resume: refused here, before any process or message."""
    if args.save_every is not None and args.save is None:
        raise SpecError("--save-every needs --save DIR")
    if args.save is not None and os.path.exists(args.save) and not os.path.isdir(args.save):
        raise SpecError(f"--save {args.save} is a file; give a folder (created if missing)")
    if args.emulate_ms is not None and (args.save or args.resume):
        raise SpecError("--save and --resume need real passes (a model to save); drop "
                        "--emulate-ms")
    if args.resume is not None and args.check_grads:
        raise SpecError("--check-grads compares step 1 with a fresh model; drop it with --resume")
    info = None
    if args.resume is not None:
        info = checkpoint.find(args.resume)
        checkpoint.check_compatible(info, layout, dataclasses.asdict(cfg))
        if not args.allow_changes:
            checkpoint.check_options(info, data_options(args, schedule), _OPTIONS,
                                     "--allow-changes")
        if info.step >= args.steps:
            raise SpecError(f"--resume {info.path} is after step {info.step} but --steps is "
                            f"{args.steps} (the total): nothing to run; use --steps "
                            f"{info.step + 1} or more")
        checkpoint.verify(info)  # every file's checksum: damage is refused before training
    if args.save is not None and not args.overwrite:
        _check_save_folder(args.save, info)


def _check_save_folder(folder: str, resumed: checkpoint.CheckpointInfo | None) -> None:
    """Refuse to save among another run's checkpoints (note: nothing lost, docs/reliability)."""
    theirs = [i for i in checkpoint.complete(Path(folder))
              if resumed is None or i.run != resumed.run]
    if theirs:
        raise SpecError(f"--save {folder} holds checkpoints of another run (the newest "
                        f"{theirs[-1].path.name}); continue that run with --resume {folder}, "
                        f"save into a new folder, or pass --overwrite to save there anyway")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _train(args)
    except SpecError as e:
        write_error(str(e))  # one write: the ranks share stderr (faults: "one line per rank")
        return 2
    except (RankFailure, PipeblocksError) as e:
        write_error(str(e))
        return 1


def _train(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.set_num_threads(args.threads)
    # everything that can be refused is refused here, before any communication
    schedule = check_args(args, world)
    spec = schedule.spec
    S = spec.num_stages
    cfg = model_config(args, S)
    try:
        model = TinyGPT(cfg, seed=args.seed)
    except RuntimeError as e:  # torch.OutOfMemoryError is one too
        return _out_of_memory(e, rank, args)
    parts = split(model, S, layout_of(args, cfg, S))
    mine: dict[int, torch.nn.Module] = {s: parts[s] for s in spec.stages_of(rank)}
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 or "MASTER_PORT" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=timedelta(seconds=args.timeout + 30))
    guard = Guard(rank, timeout=args.timeout) if dist.is_initialized() else None
    try:
        report = _loop(args, schedule, model, mine, cfg, device, guard)
    except NonFiniteError as e:  # every rank saw it in the same all-reduce: a clean stop
        return _stop_non_finite(e, args, rank, guard)
    except Exception as e:
        message = str(e)
        if not isinstance(e, RankFailure):  # outside a pass: still stop the others at once
            text = (str(e).strip().splitlines() or [""])[0][:300]
            message = f"rank {rank} failed: {type(e).__name__}: {text}"
            if guard is not None:
                # A transport error here (the barrier or all-reduce between steps) usually
                # means a peer died: as the executor does, report the root cause the
                # launcher posts within 2 s rather than this rank's "connection reset".
                cause = guard.root_cause(message)  # (or a frozen rank: faults)
                if cause != message:
                    message = f"rank {rank} stops in {guard.where}: {cause}"
        code = 2 if isinstance(e, SpecError) else 1
        if guard is not None:
            # one line for this rank, then exit (the group may wait on a dead peer); the
            # pause lets the other guards read a fault this rank just posted
            guard.report(message, code, linger=5 * guard.poll)
        write_error(message)
        os._exit(code)
    if guard is not None:
        guard.stop()
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        _print_report(args, report)
    return 0


def _waiting(guard: Guard | None, what: str) -> contextlib.AbstractContextManager[None]:
    """A collective between steps, timed by the guard like a message (``--timeout``)."""
    if guard is None:
        return contextlib.nullcontext()
    guard.where = what
    return guard.waiting("every rank")


def _out_of_memory(e: RuntimeError, rank: int, args: argparse.Namespace) -> int:
    """One line for a model too large to build (before any process group), posted as the
    run's fault for the launcher's last line; other errors go on as they were."""
    text = str(e)
    if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in text:
        raise e
    got = re.search(r"allocate (\d+) bytes", text)  # CPU; CUDA says "20.00 GiB"
    cuda = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", text)
    size = f"{int(got.group(1)) / 2**30:,.1f} GiB" if got else cuda.group(1) if cuda else "?"
    message = (f"rank {rank} ran out of memory building the model: it tried to allocate "
               f"{size} (--seq {args.seq}, --dim {args.dim}, --vocab {args.vocab}); use "
               f"smaller sizes")
    if "MASTER_PORT" in os.environ:
        post_fault(store_client(10.0), message)
    write_error(message)
    return 1


def _stop_non_finite(e: NonFiniteError, args: argparse.Namespace, rank: int,
                     guard: Guard | None) -> int:
    """Every rank stops with exit 1; rank 0 says why (and, with --json, prints the report),
    and posts it as the run's fault for the launcher's last line once every guard is off."""
    if guard is not None:
        guard.stop()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        if args.json:
            print(json.dumps({"status": "non-finite", **e.details}), flush=True)
        write_error(str(e))
        if guard is not None:
            post_fault(guard.store, str(e))
    return 1


def _loop(
    args: argparse.Namespace,
    schedule: Schedule,
    model: TinyGPT,
    mine: dict[int, torch.nn.Module],
    cfg: GPTConfig,
    device: torch.device,
    guard: Guard | None,
) -> dict[str, Any]:
    spec = schedule.spec
    S, m, v = spec.num_stages, spec.num_microbatches, spec.stages_per_rank
    rank = dist.get_rank() if dist.is_initialized() else 0
    mbs = args.microbatch_size
    batch = m * mbs
    opt: torch.optim.Optimizer | None = None
    if args.emulate_ms is not None:
        runners: dict[int, Any] = {
            s: EmulatedStage(s, S, args.emulate_ms, (mbs, cfg.seq, cfg.dim), device=device)
            for s in mine
        }
        ex = Executor(schedule, runners, None, None, guard=guard, device=device,
                      measure_memory=False)
    else:
        for mod in mine.values():
            mod.to(device)
        params = [p for mod in mine.values() for p in mod.parameters()]
        opt = torch.optim.Adam(params, lr=args.lr) if params else None
        ex = Executor(schedule, mine, lm_loss, opt, guard=guard, device=device,
                      measure_memory=args.memory)
    names = {id(p): n for n, p in model.named_parameters()}
    comm_ms = _ping(cfg, mbs, device) if args.emulate_ms is not None else None
    steps: list[dict[str, Any]] = []
    grads: dict[str, torch.Tensor] = {}
    peak = 0
    first = 0
    layout = layout_of(args, cfg, S)
    run = uuid.uuid4().hex[:12]  # a fresh run's name; a resumed run keeps its checkpoint's
    if args.resume is not None:
        if guard is not None:
            guard.where = "loading the checkpoint"
        info = checkpoint.find(args.resume)
        first, run = checkpoint.load(info, mine, opt, guard), info.run
    flags = watch_outputs(mine, device) if args.emulate_ms is None else {}
    for step in range(first, args.steps):
        tokens, targets = synthetic_batch(cfg, batch, seed=args.seed, step=step)
        tokens, targets = tokens.to(device), targets.to(device)
        if dist.is_initialized():
            with _waiting(guard, f"the barrier before step {step + 1}"):
                dist.barrier()
        res = ex.step(tokens, targets)
        if step == 0 and args.check_grads:
            grads = {names[id(p)]: p.grad.detach().cpu().clone()
                     for mod in mine.values() for p in mod.parameters() if p.grad is not None}
        peak = max(peak, res.peak_activation_bytes)
        # one clock on one host: the makespan is the latest end minus the earliest start
        # and the first non-finite value (the smallest key of _first_bad, negated for MAX)
        bad = first_bad(mine, flags, res.losses, S)
        loss_in = res.loss if res.loss is not None and bad == none(S) else -math.inf
        t = torch.tensor([-res.start, res.end, loss_in, -bad], dtype=torch.float64,
                         device=device)
        if dist.is_initialized():
            with _waiting(guard, f"the all-reduce after step {step + 1}"):
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if -int(t[3]) < none(S):
            raise non_finite_error(-int(t[3]), step + 1, S, stage_rank=spec.rank_of, lr=args.lr,
                                   save=args.save, losses=[s["loss"] for s in steps])
        ms = (float(t[0]) + float(t[1])) * 1e3
        # emulated passes compute no loss
        loss = float(t[2]) if math.isfinite(float(t[2])) and args.emulate_ms is None else None
        steps.append({"step": step + 1, "ms": ms, "loss": loss})
        if rank == 0 and not args.json:
            tok_s = batch * cfg.seq / (ms / 1e3)
            shown = f"{loss:.4f}" if loss is not None else "-"
            print(f"step {step + 1:>3}/{args.steps}  loss {shown}  step {ms:8.1f} ms  "
                  f"{tok_s:9,.0f} tokens/s", flush=True)
        if args.save and (step + 1 == args.steps or (args.save_every and
                                                      (step + 1) % args.save_every == 0)):
            if guard is not None:
                guard.where = f"saving the checkpoint of step {step + 1}"
            checkpoint.save(args.save, step + 1, mine, opt, layout=layout,
                            model=dataclasses.asdict(cfg), schedule=schedule.name, run=run,
                            options=data_options(args, schedule), guard=guard)
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
        "schedule": schedule.name or str(args.schedule_file),
        "ranks": spec.num_ranks,
        "microbatches": m,
        "stages_per_rank": v,
        "placement": spec.placement.value,
        "steps": args.steps,
        "first_step": first + 1,
        "backend": dist.get_backend() if dist.is_initialized() else "none",
        "step_ms": step_ms,
        "step_ms_median": median,
        "tokens_per_s": batch * cfg.seq / (median / 1e3),
        "loss": [s["loss"] for s in steps],
    }
    if args.memory:
        report["peak_activation_bytes"] = [g[1] for g in sorted(gathered)]
    if args.check_grads:
        report.update(_check(args, cfg, batch, {k: g for _, _, gs in gathered for k, g in gs.items()},
                             steps[0]["loss"]))
    if args.emulate_ms is not None:
        from pipeblocks.sim import UniformCosts, simulate

        x = args.emulate_ms
        # UniformCosts times are per rank and divided by v per stage: pass x * v so that every
        # stage pass takes x ms, as the emulated stages sleep
        sim = simulate(schedule, UniformCosts(f=x * v, b=x * v, w=x * v, comm=comm_ms or 0.0))
        report.update({"emulate_ms": x, "comm_ms": comm_ms, "simulated_ms": sim.makespan,
                       "measured_over_simulated": median / sim.makespan})
    return report


def _check(
    args: argparse.Namespace, cfg: GPTConfig, batch: int, grads: dict[str, torch.Tensor],
    loss: float | None,
) -> dict[str, Any]:
    """The unpartitioned model on step 1's batch, in this process: the largest differences."""
    ref = TinyGPT(cfg, seed=args.seed)
    tokens, targets = synthetic_batch(cfg, batch, seed=args.seed, step=0)
    ref_loss = lm_loss(ref(tokens), targets)
    ref_loss.backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    if set(want) != set(grads):
        missing = sorted(set(want) ^ set(grads))[:3]
        raise PipeblocksError(f"--check-grads: the pipeline and the reference differ in which "
                              f"parameters have gradients (e.g. {missing})")
    diff = max(float((grads[n] - g).abs().max()) for n, g in want.items())
    return {"grad_max_abs_diff": diff,
            "loss_abs_diff": abs(loss - ref_loss.item()) if loss is not None else None,
            "reference_loss": ref_loss.item()}


def _ping(cfg: GPTConfig, mbs: int, device: torch.device) -> float:
    """One-way time (ms) of one activation from rank 0 to rank 1 (median of 20)."""
    return one_way_ms((mbs, cfg.seq, cfg.dim), 25, device)


def _print_report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['schedule']} on {r['ranks']} ranks, {r['microbatches']} microbatches: median "
          f"step {r['step_ms_median']:.1f} ms, {r['tokens_per_s']:,.0f} tokens/s")
    if "peak_activation_bytes" in r:
        mib = ", ".join(f"{b / 2**20:.2f}" for b in r["peak_activation_bytes"])
        print(f"peak activation memory per rank (MiB): {mib}")
    if "grad_max_abs_diff" in r:
        print(f"check against the unpartitioned model: grad_max_abs_diff "
              f"{r['grad_max_abs_diff']:.3g}, loss_abs_diff {r['loss_abs_diff']:.3g}")
    if "simulated_ms" in r:
        print(f"emulated {r['emulate_ms']:g} ms per pass: simulated {r['simulated_ms']:.1f} ms "
              f"(comm {r['comm_ms']:.3f} ms), measured / simulated "
              f"{r['measured_over_simulated']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
