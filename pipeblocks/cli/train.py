"""``pipeblocks train``: run a schedule on P local processes (gloo on CPU, NCCL on GPUs).

    $ pipeblocks train --schedule v-half --ranks 4 --microbatches 8 --steps 10
    $ pipeblocks train --schedule 1f1b --ranks 4 --microbatches 8 --steps 3 --check-grads --json
    $ pipeblocks train --schedule zb-v --ranks 4 --microbatches 8 --steps 5 --emulate-ms 20
    $ pipeblocks train --schedule-file my.csv --ranks 4 --steps 5
    $ pipeblocks train --schedule 1f1b --ranks 4 --microbatches 8 --steps 20 --save ckpt --save-every 5
    $ pipeblocks train --schedule v-half --ranks 2 --microbatches 8 --steps 40 --resume ckpt
    $ pipeblocks train --schedule 1f1b --ranks 4 --microbatches 8 --steps 6 --fill eval --json
    $ torchrun --nproc-per-node 4 -m pipeblocks.train --schedule 1f1b --microbatches 8

This command starts the P processes itself (:func:`pipeblocks.runtime.launch.launch`); each
runs ``python -m pipeblocks.train`` (:func:`rank_main`), which is also what torchrun starts.
Both build the same :class:`~pipeblocks.runtime.trainer.TrainPlan` from the options, once per
process, refusing bad options before any communication; the rank program hands it to
:func:`pipeblocks.runtime.trainer.run_rank` and prints rank 0's report. Nothing here imports
torch at module level, so ``pipeblocks --help`` works anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from pipeblocks.cli.common import one_line_errors, positive_int
from pipeblocks.cli.fill import add_train_fill_args, draw_train_fill, print_train_fill
from pipeblocks.cli.memory import add_recompute_arg, apply_recompute
from pipeblocks.cli.offload import (
    OFFLOAD_FLAGS,
    add_train_offload_args,
    apply_offload,
    check_train_offload,
)
from pipeblocks.cli.tensor_parallel import add_tp_arg, check_tp
from pipeblocks.cli.tinygpt import layout_of, model_config
from pipeblocks.errors import PipeblocksError, SpecError

if TYPE_CHECKING:
    from pipeblocks.ir import Schedule
    from pipeblocks.runtime.trainer import TrainPlan

__all__ = ["register", "run", "add_train_args", "to_argv", "MODELS", "build_plan", "build_parser",
           "rank_main",
           "load_model"]

MODELS = ("tiny-gpt",)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (got {text})")
    return value


def add_train_args(p: argparse.ArgumentParser, *, ranks_required: bool) -> None:
    """The options of ``pipeblocks train`` and ``python -m pipeblocks.train``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--schedule", metavar="NAME", help="generator name (see `pipeblocks list`)")
    src.add_argument("--schedule-file", metavar="FILE",
                     help="a schedule file: PyTorch CSV or pipeblocks JSON (`pipeblocks export`)")
    p.add_argument("-p", "--ranks", type=positive_int, required=ranks_required,
                   help="number of ranks (processes): dp x pipeline ranks" +
                   ("" if ranks_required else "; default: WORLD_SIZE"))
    p.add_argument("--dp", type=positive_int, default=1, metavar="D",
                   help="data-parallel replicas of the pipeline (DDP-style gradient "
                   "all-reduce); pipeline ranks = ranks / D (default 1, docs/hybrid.md)")
    p.add_argument("--dp-mode", choices=("ddp", "fsdp"), default="ddp",
                   help="ddp: each stage's gradients all-reduced; fsdp: each stage sharded "
                   "with FSDP2 over its dp group (default ddp)")
    p.add_argument("--no-reshard-after-forward", action="store_true",
                   help="fsdp: keep a stage's gathered parameters from F to its backward")
    add_tp_arg(p)
    p.add_argument("--emulate-bandwidth", type=_positive_float, default=1e8, metavar="BYTES/S",
                   help="with --emulate-ms and --dp: each stage's gradient all-reduce sleeps "
                   "what a ring over links of this bandwidth takes (default 1e8)")
    p.add_argument("-m", "--microbatches", type=positive_int, default=None,
                   help="microbatches per step (required with --schedule)")
    p.add_argument("--stages-per-rank", type=positive_int, default=None, metavar="V",
                   help="model chunks per rank (default: what the schedule needs)")
    add_recompute_arg(p)
    add_train_offload_args(p)  # --offload, --offload-budget, --emulate-link: cli/offload.py
    p.add_argument("--steps", type=positive_int, default=10, help="training steps (default 10)")
    p.add_argument("--model", default="tiny-gpt", metavar="NAME|MODULE:FACTORY|FILE.py:FACTORY",
                   help="tiny-gpt (default), or a factory(num_stages, seed) returning a model "
                   "source, from a module or a Python file (docs/models.md)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="tiny-gpt: transformer blocks (default: the multiple of the stage "
                   "count >= 8)")
    p.add_argument("--layout", default=None, metavar="N,N,...",
                   help="blocks per stage, comma-separated (tiny-gpt: without the embedding "
                   "and head; another model: its layers; default: even), or 'auto' (tiny-gpt: "
                   "balance the ranks' FLOPs with the head counted, as `pipeblocks plan` does)")
    p.add_argument("--dim", type=positive_int, default=64, help="model width (default 64)")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--seq", type=positive_int, default=32, help="sequence length (default 32)")
    p.add_argument("--vocab", type=positive_int, default=256, help="vocabulary (default 256)")
    p.add_argument("--microbatch-size", type=positive_int, default=4, metavar="B",
                   help="sequences per microbatch (default 4)")
    p.add_argument("--lr", type=_positive_float, default=3e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data")
    p.add_argument("--emulate-ms", type=_positive_float, default=None, metavar="X",
                   help="every F, B, W pass sleeps X ms (BW 2X) instead of computing; also "
                   "simulate the schedule and report simulated_ms, measured_over_simulated")
    p.add_argument("--check-grads", action="store_true",
                   help="compare the first step with the unpartitioned model in one process: "
                   "grad_max_abs_diff, loss_abs_diff")
    p.add_argument("--memory", action="store_true",
                   help="measure each rank's peak activation memory (slower forward passes)")
    p.add_argument("--timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="stop every rank when one waits longer than this for a message, "
                   "or fails (default 60)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per rank (default 1)")
    p.add_argument("--save", metavar="DIR", default=None,
                   help="save a checkpoint (every rank's stages and optimizer state, the step) "
                   "in DIR after the last step and every --save-every steps")
    p.add_argument("--save-every", type=positive_int, default=None, metavar="K",
                   help="with --save: also save after every K-th step")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue from the newest checkpoint in DIR (or that checkpoint "
                   "folder): any schedule with the same stage layout; --steps is the total; "
                   "refused if a file fails its checksum, or if --seed, --lr or the batch "
                   "differ from the checkpoint's")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue even though --seed, --lr or the batch "
                   "(microbatches x microbatch size) differ from the checkpoint's")
    p.add_argument("--overwrite", action="store_true",
                   help="with --save: save into a folder that holds another run's checkpoints "
                   "(refused otherwise); they are kept unless this run saves the same steps")
    add_train_fill_args(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object as the last line of stdout")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train", help="train a model (the small GPT or yours) with a schedule on P processes",
        description="Run any schedule on torch.distributed: starts P local rank processes "
        "(gloo on 127.0.0.1, NCCL when CUDA is there) that train the small GPT on synthetic "
        "data, or the model a --model factory gives. The same per-rank program runs under "
        "torchrun: "
        "`torchrun --nproc-per-node P -m pipeblocks.train ...`.",
        epilog="example: pipeblocks train --schedule v-half --ranks 4 --microbatches 8 --steps 5",
    )
    add_train_args(p, ranks_required=True)
    p.set_defaults(func=run)
    one_line_errors(p)


def to_argv(args: argparse.Namespace) -> list[str]:
    """The parsed options back as command-line arguments (for the rank processes)."""
    out: list[str] = []
    for action_dest, flag in _FLAGS:
        value = getattr(args, action_dest, None)
        if value is None or value is False:
            continue
        out += [flag] if value is True else [flag, str(value)]
    return out


_FLAGS = [
    ("schedule", "--schedule"), ("schedule_file", "--schedule-file"), ("ranks", "--ranks"),
    ("microbatches", "--microbatches"), ("stages_per_rank", "--stages-per-rank"),
    ("steps", "--steps"), ("model", "--model"), ("layers", "--layers"), ("layout", "--layout"),
    ("dim", "--dim"), ("heads", "--heads"), ("seq", "--seq"), ("vocab", "--vocab"),
    ("microbatch_size", "--microbatch-size"), ("lr", "--lr"), ("seed", "--seed"),
    ("emulate_ms", "--emulate-ms"), ("check_grads", "--check-grads"), ("memory", "--memory"),
    ("timeout", "--timeout"), ("threads", "--threads"), ("json", "--json"),
    ("save", "--save"), ("save_every", "--save-every"), ("resume", "--resume"),
    ("allow_changes", "--allow-changes"), ("overwrite", "--overwrite"),
    ("recompute", "--recompute"),
    ("dp", "--dp"), ("emulate_bandwidth", "--emulate-bandwidth"), ("dp_mode", "--dp-mode"),
    ("no_reshard_after_forward", "--no-reshard-after-forward"), ("tp", "--tp"),
    ("fill", "--fill"), ("fill_ms", "--fill-ms"), ("fill_count", "--fill-count"),
    ("fill_picture", "--fill-picture"), ("fill_headroom", "--fill-headroom"),
    *OFFLOAD_FLAGS,
]


def run(args: argparse.Namespace) -> int:
    build_plan(args)  # refuse bad options here, before any process starts
    from pipeblocks.runtime.launch import launch

    cmd = [sys.executable, "-m", "pipeblocks.train", *to_argv(args)]
    result = launch(cmd, args.ranks, grace=min(args.timeout, 10.0) + 5.0, threads=args.threads)
    if result.ok:
        return 0
    bad = [r for r, c in enumerate(result.codes) if c != 0]
    if result.fault:
        print(f"pipeblocks: error: ranks {bad} stopped: {result.fault}", file=sys.stderr)
    return 2 if set(result.codes) == {2} else 1


# -- the plan: every check that needs no process group ---------------------------------------

def build_plan(args: argparse.Namespace, world: int | None = None) -> TrainPlan:
    """The checked plan of these options (``world``: the processes started, under torchrun)."""
    from pipeblocks.models.gpt import GPTSource
    from pipeblocks.runtime.trainer import TrainOptions, TrainPlan

    num_ranks = args.ranks or world
    if num_ranks is None:
        raise SpecError("give --ranks P (or start under torchrun, which sets WORLD_SIZE)")
    if world is not None and num_ranks != world:
        raise SpecError(f"--ranks {num_ranks} but {world} processes were started; "
                        f"start {num_ranks} (torchrun --nproc-per-node {num_ranks})")
    if args.emulate_ms is not None and args.check_grads:
        raise SpecError("--check-grads needs real passes; drop --emulate-ms")
    schedule = load_schedule(args, _pipeline_ranks(args, num_ranks))
    S = schedule.spec.num_stages
    if args.model in MODELS:
        cfg = model_config(args, S)
        source: Any = GPTSource(cfg, seed=args.seed)
        layout = layout_of(args, cfg, S, schedule.spec)
    else:
        source = load_model(args.model)(S, args.seed)
        layout = _source_layout(args, source, S)
    options = TrainOptions(
        steps=args.steps, microbatch_size=args.microbatch_size, lr=args.lr, seed=args.seed,
        emulate_ms=args.emulate_ms, check_grads=args.check_grads, memory=args.memory,
        timeout=args.timeout, threads=args.threads, save=args.save, save_every=args.save_every,
        dp=args.dp, tp=args.tp, emulate_bandwidth=args.emulate_bandwidth, dp_mode=args.dp_mode,
        reshard_after_forward=not args.no_reshard_after_forward,
        fill=args.fill, fill_ms=args.fill_ms, fill_count=args.fill_count,
        fill_headroom_mb=args.fill_headroom, emulate_link=args.emulate_link)
    plan = TrainPlan(schedule, source, layout, options,
                     name=schedule.name or str(args.schedule_file))
    check_tp(args, plan)
    check_train_offload(schedule, args)
    return dataclasses.replace(plan, resume=_check_checkpoint_args(args, plan))


def _pipeline_ranks(args: argparse.Namespace, num_ranks: int) -> int:
    """Pipeline ranks of the mesh (``--ranks`` / ``--dp``), refused where it does not fit."""
    from pipeblocks.ir.hybrid import Mesh

    return Mesh.of(num_ranks, args.dp, args.tp).pp


def load_schedule(args: argparse.Namespace, num_ranks: int) -> Schedule:
    """The schedule named by ``--schedule`` or read from ``--schedule-file``, validated."""
    from pipeblocks.ir import validate

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
    schedule = apply_offload(apply_recompute(schedule, args), args)
    validate(schedule)
    return schedule


def load_model(text: str) -> Any:
    """The factory named ``MODULE:FACTORY`` or ``path/to/file.py:FACTORY``."""
    import importlib
    import importlib.util

    where, _, name = text.rpartition(":")
    if not where or not name:
        raise SpecError(f"--model {text!r} is neither {', '.join(MODELS)} nor MODULE:FACTORY "
                        f"or FILE.py:FACTORY; e.g. --model examples/hf_llama.py:build")
    try:
        if where.endswith(".py") or os.sep in where:
            if not os.path.isfile(where):
                raise SpecError(f"--model {text}: no file {where}")
            spec = importlib.util.spec_from_file_location(
                f"pipeblocks_model_{os.path.basename(where)[:-3]}", where)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as e:
        raise SpecError(f"--model {text}: cannot import {where} ({e}); install what it needs "
                        f"(a HuggingFace model: pip install 'pipeblocks[hf]')") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SpecError(f"--model {text}: {where} has no function {name!r}; give a factory "
                        f"(num_stages, seed) -> model source (docs/models.md)")
    return factory


def _source_layout(args: argparse.Namespace, source: Any, num_stages: int) -> tuple[int, ...]:
    """Layers per stage of a model from a factory: --layout, its own, or an even spread."""
    from pipeblocks.runtime.split import even_layout, layers_of

    if args.layout is not None:
        try:
            return tuple(int(x) for x in args.layout.split(",") if x.strip())
        except ValueError:
            raise SpecError(f"--layout {args.layout!r} is not a comma-separated list of "
                            f"integers") from None
    own = getattr(source, "layout", None)
    if own is not None:
        return tuple(own(num_stages))
    return even_layout(len(layers_of(source.build())), num_stages)


def _check_checkpoint_args(args: argparse.Namespace, plan: TrainPlan) -> Any:
    """--save / --save-every / --resume: refused here, before any process or message; the
    checkpoint to resume from (found once, its files' checksums verified), or None."""
    if args.save_every is not None and args.save is None:
        raise SpecError("--save-every needs --save DIR")
    if args.save is not None and os.path.exists(args.save) and not os.path.isdir(args.save):
        raise SpecError(f"--save {args.save} is a file; give a folder (created if missing)")
    if args.emulate_ms is not None and (args.save or args.resume):
        raise SpecError("--save and --resume need real passes (a model to save); drop "
                        "--emulate-ms")
    if args.resume is not None and args.check_grads:
        raise SpecError("--check-grads compares step 1 with a fresh model; drop it with --resume")
    from pipeblocks.runtime import checkpoint
    from pipeblocks.runtime.trainer import DATA_OPTIONS

    info = None
    if args.resume is not None:
        info = checkpoint.find(args.resume)
        checkpoint.check_compatible(info, plan.layout, plan.model.describe())
        if not args.allow_changes:
            checkpoint.check_options(info, plan.data_options(), DATA_OPTIONS, "--allow-changes")
        if info.step >= args.steps:
            raise SpecError(f"--resume {info.path} is after step {info.step} but --steps is "
                            f"{args.steps} (the total): nothing to run; use --steps "
                            f"{info.step + 1} or more")
        checkpoint.verify(info)  # every file's checksum: damage is refused before training
    if args.save is not None and not args.overwrite:
        _check_save_folder(args.save, info)
    return info


def _check_save_folder(folder: str, resumed: Any) -> None:
    """Refuse to save among another run's checkpoints (note: nothing lost, docs/reliability)."""
    from pathlib import Path

    from pipeblocks.runtime import checkpoint

    theirs = [i for i in checkpoint.complete(Path(folder))
              if resumed is None or i.run != resumed.run]
    if theirs:
        raise SpecError(f"--save {folder} holds checkpoints of another run (the newest "
                        f"{theirs[-1].path.name}); continue that run with --resume {folder}, "
                        f"save into a new folder, or pass --overwrite to save there anyway")


# -- one rank: python -m pipeblocks.train ----------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The options of one rank (``python -m pipeblocks.train``): `train`'s, --ranks optional."""
    p = argparse.ArgumentParser(
        prog="python -m pipeblocks.train",
        description="One pipeline rank (start P of them with torchrun or `pipeblocks train`).",
    )
    add_train_args(p, ranks_required=False)
    return p


def rank_main(argv: list[str] | None = None) -> int:
    """One pipeline rank (``python -m pipeblocks.train``, what torchrun and `train` start)."""
    args = build_parser().parse_args(argv)
    from pipeblocks.runtime.faults import RankFailure, write_error
    from pipeblocks.runtime.finite import NonFiniteError
    from pipeblocks.runtime.trainer import run_rank

    try:
        plan = build_plan(args, int(os.environ.get("WORLD_SIZE", "1")))
        report = run_rank(plan, on_step=None if args.json else _step_line(plan))
    except NonFiniteError as e:  # every rank stops with exit 1; rank 0 says why
        if int(os.environ.get("RANK", "0")) == 0:
            if args.json:
                print(json.dumps({"status": "non-finite", **e.details}), flush=True)
            write_error(str(e))
        return 1
    except SpecError as e:
        write_error(str(e))  # one write: the ranks share stderr (faults: "one line per rank")
        return 2
    except (RankFailure, PipeblocksError) as e:
        write_error(str(e))
        return 1
    if report:
        draw_train_fill(args, plan.schedule, report)
        _print_report(args, report)
    return 0


def _step_line(plan: TrainPlan) -> Any:
    tokens = plan.global_batch_size * plan.model.tokens_per_sample
    total = plan.options.steps

    def line(row: dict[str, Any]) -> None:
        loss = row["loss"]
        shown = f"{loss:.4f}" if loss is not None else "-"
        print(f"step {row['step']:>3}/{total}  loss {shown}  step {row['ms']:8.1f} ms  "
              f"{tokens / (row['ms'] / 1e3):9,.0f} tokens/s", flush=True)
    return line


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
    print_train_fill(r)
    if "simulated_ms" in r:
        print(f"emulated {r['emulate_ms']:g} ms per pass: simulated {r['simulated_ms']:.1f} ms "
              f"(comm {r['comm_ms']:.3f} ms), measured / simulated "
              f"{r['measured_over_simulated']:.3f}")
