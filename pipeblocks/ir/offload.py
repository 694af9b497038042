"""Activation offload as schedule data: which (stage, microbatch) pairs move to host memory.

An offloaded pair copies the activations its F saved to host memory right after the F
(``OFFLOAD``) and back before its B (``RELOAD``, posted one pass ahead of the B so that the copy
overlaps that pass), over each rank's own host link (:class:`OffloadLink`: bandwidth, latency,
and whether it shares the link with the pipeline transfers). The copies are asynchronous:
compute goes on while they run, and only the B waits for its RELOAD. The choice and the link
are part of the schedule (``Schedule.offload``): the JSON format stores them, the validator
checks them, the lowering adds the move ops (:func:`with_moves`), the simulator times them
(:mod:`pipeblocks.sim.offload`), the pictures draw them and the executor runs them
(:mod:`pipeblocks.runtime.offload`). docs/memory.md, "Offload", has the accounting.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.ir.lowering import lower, op_text
    >>> s = with_offload(generate("1f1b", 2, 3))
    >>> sorted(s.offload.pairs)     # rank 1 runs each B right after its F: nothing to gain
    [(0, 0), (0, 1), (0, 2)]
    >>> print(" ".join(op_text(op) for op in with_moves(lower(s)).programs[0][:6]))
    0F0 send(act 0->1 #0) offload(0#0) reload(0#0) 0F1 send(act 0->1 #1)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pipeblocks.checks import expect
from pipeblocks.errors import ScheduleError, SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.lowering import LoweredSchedule
from pipeblocks.ir.moves import Move, MoveKind, Offload, OffloadLink
from pipeblocks.ir.schedule import Schedule

__all__ = ["Offload", "OffloadLink", "Move", "MoveKind", "eligible", "with_offload",
           "parse_offload", "parse_link", "check_offload", "with_moves", "offload_label",
           "reload_after"]


def _gaps(schedule: Schedule) -> dict[tuple[int, int], int]:
    """Per (stage, mb): how many passes its rank runs between its F and its B (or BW)."""
    out: dict[tuple[int, int], int] = {}
    for prog in schedule.programs:
        at: dict[tuple[int, int], int] = {}
        for i, a in enumerate(prog):
            if a.kind is Pass.F:
                at[(a.stage, a.mb)] = i
            elif a.kind.frees_input_grad and (a.stage, a.mb) in at:
                out[(a.stage, a.mb)] = i - at[(a.stage, a.mb)] - 1
    return out


def eligible(schedule: Schedule) -> list[tuple[int, int]]:
    """The pairs worth offloading, in order: a stage not recomputed whose rank runs at least
    one pass between the pair's F and its B."""
    return sorted(k for k, gap in _gaps(schedule).items()
                  if gap > 0 and k[0] not in schedule.recompute)


def with_offload(schedule: Schedule, pairs: Iterable[tuple[int, int]] | None = None,
                 link: OffloadLink | None = None) -> Schedule:
    """``schedule`` with ``pairs`` (default: every :func:`eligible` pair) offloaded over
    ``link`` (default: the schedule's link, else ``OffloadLink()``); no pairs: no offload."""
    expect("with_offload", "schedule", schedule, Schedule)
    chosen = frozenset(eligible(schedule) if pairs is None else pairs)
    link = link or (schedule.offload.link if schedule.offload else OffloadLink())
    out = Schedule(schedule.spec, schedule.programs, schedule.name, schedule.recompute,
                   Offload(chosen, link) if chosen else None)
    check_offload(out)
    return out


def check_offload(schedule: Schedule) -> None:
    """The offload rules: each pair names a stage and microbatch of the spec, not a recomputed
    stage (it keeps only its input already), and its rank runs a pass between its F and its B
    (the RELOAD is posted before that pass). A ScheduleError names the pair and the fix."""
    if schedule.offload is None:
        return
    spec, gaps = schedule.spec, _gaps(schedule)
    for s, j in sorted(schedule.offload.pairs):
        if not (0 <= s < spec.num_stages and 0 <= j < spec.num_microbatches):
            raise ScheduleError(
                f"offload names stage {s}, microbatch {j}, outside {spec.describe()} "
                f"(stages 0..{spec.num_stages - 1}, microbatches 0..{spec.num_microbatches - 1})",
                rule="offload")
        if s in schedule.recompute:
            raise ScheduleError(
                f"offload names stage {s}, microbatch {j}, but stage {s} is recomputed (it keeps "
                f"only its input); offload it or recompute it, not both", rule="offload")
        if gaps.get((s, j), 0) < 1:
            raise ScheduleError(
                f"offload names stage {s}, microbatch {j}, but its rank runs its B right after "
                f"its F (or not at all): nothing to hide the copies behind; leave that pair out "
                f"(with_offload() without pairs picks the eligible ones)", rule="offload")


def parse_offload(text: str, schedule: Schedule) -> list[tuple[int, int]] | str:
    """``--offload``: ``all`` (every eligible pair), ``none``, ``auto`` (returned as the word:
    the simulator's search picks) or a FRACTION in [0, 1] of the eligible pairs, picked
    evenly from each stage's microbatches (the first ones of each stage first)."""
    expect("parse_offload", "text", text, str)
    word = text.strip().lower()
    pairs = eligible(schedule)
    if word == "all":
        return pairs
    if word in ("none", ""):
        return []
    if word == "auto":
        return word
    try:
        frac = float(word)
    except ValueError:
        frac = -1.0
    if not 0.0 <= frac <= 1.0:
        raise SpecError(f"--offload takes all, none, auto or a fraction in [0, 1] (got "
                        f"{text!r}); write e.g. --offload 0.5")
    return fraction_pairs(pairs, frac)


def fraction_pairs(pairs: list[tuple[int, int]], frac: float) -> list[tuple[int, int]]:
    """``frac`` of each stage's ``pairs`` (rounded to the nearest), its earliest microbatches."""
    by_stage: dict[int, list[tuple[int, int]]] = {}
    for p in pairs:
        by_stage.setdefault(p[0], []).append(p)
    return sorted(p for group in by_stage.values()
                  for p in sorted(group, key=lambda q: q[1])[: round(frac * len(group))])


def parse_link(text: str) -> OffloadLink:
    """``--offload-link BANDWIDTH[,LATENCY[,shared]]`` in the cost model's units."""
    expect("parse_link", "text", text, str)
    parts = [t.strip() for t in text.split(",")]
    shared = parts[-1].lower() == "shared"
    if shared:
        parts = parts[:-1]
    try:
        nums = [float(t) for t in parts]
    except ValueError:
        nums = []
    if not 1 <= len(nums) <= 2:
        raise SpecError(f"--offload-link takes BANDWIDTH[,LATENCY][,shared] (got {text!r}); "
                        f"write e.g. --offload-link 2 or --offload-link 2,0.05,shared")
    return OffloadLink(nums[0], nums[1] if len(nums) > 1 else 0.0, shared)


def reload_after(schedule: Schedule) -> dict[tuple[int, int], Action]:
    """Per offloaded pair: the pass its RELOAD is posted before (the pass before its B)."""
    if schedule.offload is None:
        return {}
    pairs, out = schedule.offload.pairs, {}
    for prog in schedule.programs:
        for prev, a in zip(prog, prog[1:], strict=False):
            if a.kind.frees_input_grad and (a.stage, a.mb) in pairs:
                out[(a.stage, a.mb)] = prev
    return out


def with_moves(low: LoweredSchedule) -> LoweredSchedule:
    """``low`` with ``offload(s#j)`` after each offloaded F (and its sends) and ``reload(s#j)``
    right before the pass that precedes its B; unchanged without offload."""
    schedule = low.schedule
    if schedule.offload is None:
        return low
    pairs, before = schedule.offload.pairs, reload_after(schedule)
    reload_at = {a: (s, j) for (s, j), a in before.items()}
    programs = []
    for prog in low.programs:
        ops: list = []
        pending: Move | None = None
        for op in prog:
            if pending is not None and not _is_send(op):
                ops.append(pending)
                pending = None
            if isinstance(op, Action) and op in reload_at:
                ops.append(Move(MoveKind.RELOAD, *reload_at[op]))
            ops.append(op)
            if isinstance(op, Action) and op.kind is Pass.F and (op.stage, op.mb) in pairs:
                pending = Move(MoveKind.OFFLOAD, op.stage, op.mb)
        if pending is not None:
            ops.append(pending)
        programs.append(tuple(ops))
    return LoweredSchedule(schedule, tuple(programs))


def _is_send(op: object) -> bool:
    from pipeblocks.ir.lowering import Comm, CommOp

    return isinstance(op, Comm) and op.op is CommOp.SEND


def offload_label(schedule: Schedule) -> str:
    """A short note for headers: ``""`` or ``"offload: 12 of 24 F (link 2 per time unit)"``."""
    off = schedule.offload
    if off is None:
        return ""
    total = schedule.spec.num_stages * schedule.spec.num_microbatches
    link = off.link
    speed = "instant" if math.isinf(link.bandwidth) else f"{link.bandwidth:g} per time unit"
    lat = f", latency {link.latency:g}" if link.latency else ""
    return (f"offload: {len(off.pairs)} of {total} F (link {speed}{lat}"
            f"{', shared' if link.shared else ''})")
