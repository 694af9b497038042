"""``pipeblocks train``: run a schedule on P local processes (gloo on CPU, NCCL on GPUs).

    $ pipeblocks train --schedule v-half --ranks 4 --microbatches 8 --steps 10
    $ pipeblocks train --schedule 1f1b --ranks 4 --microbatches 8 --steps 3 --check-grads --json
    $ pipeblocks train --schedule zb-v --ranks 4 --microbatches 8 --steps 5 --emulate-ms 20
    $ pipeblocks train --schedule-file my.csv --ranks 4 --steps 5
    $ pipeblocks train --schedule 1f1b --ranks 4 --microbatches 8 --steps 20 --save ckpt --save-every 5
    $ pipeblocks train --schedule v-half --ranks 2 --microbatches 8 --steps 40 --resume ckpt
    $ torchrun --nproc-per-node 4 -m pipeblocks.train --schedule 1f1b --microbatches 8

This command starts the P processes itself (:func:`pipeblocks.runtime.launch.launch`); each
runs :mod:`pipeblocks.train`, which is also what torchrun starts. The options are defined here,
without torch, so ``pipeblocks --help`` works anywhere.
"""

from __future__ import annotations

import argparse
import sys

from pipeblocks.cli.common import one_line_errors, positive_int

__all__ = ["register", "run", "add_train_args", "to_argv", "MODELS"]

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
                   help="number of pipeline ranks (processes)" +
                   ("" if ranks_required else "; default: WORLD_SIZE"))
    p.add_argument("-m", "--microbatches", type=positive_int, default=None,
                   help="microbatches per step (required with --schedule)")
    p.add_argument("--stages-per-rank", type=positive_int, default=None, metavar="V",
                   help="model chunks per rank (default: what the schedule needs)")
    p.add_argument("--steps", type=positive_int, default=10, help="training steps (default 10)")
    p.add_argument("--model", choices=MODELS, default="tiny-gpt", help="model (default tiny-gpt)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="transformer blocks (default: the multiple of the stage count >= 8)")
    p.add_argument("--layout", default=None, metavar="N,N,...",
                   help="blocks per stage, comma-separated (default: even)")
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
    p.add_argument("--json", action="store_true",
                   help="print one JSON object as the last line of stdout")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train", help="train a small GPT with a schedule on P local processes",
        description="Run any schedule on torch.distributed: starts P local rank processes "
        "(gloo on 127.0.0.1, NCCL when CUDA is there) that train the small GPT on synthetic "
        "data. The same per-rank program runs under torchrun: "
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
]


def run(args: argparse.Namespace) -> int:
    from pipeblocks.train import check_args

    check_args(args)  # refuse bad options here, before any process starts
    from pipeblocks.runtime.launch import launch

    cmd = [sys.executable, "-m", "pipeblocks.train", *to_argv(args)]
    result = launch(cmd, args.ranks, grace=min(args.timeout, 10.0) + 5.0, threads=args.threads)
    if result.ok:
        return 0
    bad = [r for r, c in enumerate(result.codes) if c != 0]
    if result.fault:
        print(f"pipeblocks: error: ranks {bad} stopped: {result.fault}", file=sys.stderr)
    return 2 if set(result.codes) == {2} else 1
