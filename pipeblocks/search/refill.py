"""Cost-aware W placement: keep each rank's F/B order, put its W's where the real gaps are.

A schedule built in unit slots (a repeated building block) places every W in a slot of its
own. Under real costs (F, B and W of different lengths, transfers) those slots are not where
the rank idles. :func:`refill_w` keeps every rank's order of F, B and BW passes and decides
anew where the W's go (see the note "W deferral" in :mod:`pipeblocks.ir`), list-executing the
pipeline with the real times:

- when the rank's next F or B can start now, it runs (F and B are on the critical path);
- when it cannot, the oldest pending W runs if the wait is at least ``slack`` times that W's
  length (``slack=0``: any wait; ``1``: only waits the W fits in);
- a W also runs whenever the next F would take the rank over its memory ``limit``.

No rank ever holds more than the limit it is given (the input schedule's own peak per rank
by default), and since W's free memory, the result never holds more than the input does.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import UniformCosts, simulate
    >>> costs = UniformCosts(f=3, b=4, w=2, comm=0.5)
    >>> s = generate("v-half", 4, 16)
    >>> simulate(refill_w(s, costs), costs).makespan < simulate(s, costs).makespan
    True
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

from pipeblocks.blocks.lifespan import cap_tolerance, per_rank_caps
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.tables import Tables, tables

__all__ = ["refill_w", "program_peaks"]


def program_peaks(schedule: Schedule, tab: Tables) -> tuple[float, ...]:
    """Per rank, the most it holds running its program (memory depends only on the order):
    F allocates mem_f at its start; B frees mem_f - mem_w, W mem_w, BW mem_f at their ends."""
    add = {Pass.F: tab.mem_f,
           Pass.B: tuple(w - f for f, w in zip(tab.mem_f, tab.mem_w, strict=True)),
           Pass.W: tuple(-w for w in tab.mem_w), Pass.BW: tuple(-f for f in tab.mem_f)}
    peaks = []
    for prog in schedule.programs:
        held = peak = 0.0
        for a in prog:
            held += add[a.kind][a.stage]
            if held > peak:
                peak = held
        peaks.append(peak)
    return tuple(peaks)


def refill_w(
    schedule: Schedule,
    costs: CostModel,
    limit: float | Sequence[float] | None = None,
    slack: float = 1.0,
) -> Schedule:
    """``schedule`` with its W's moved to where each rank would otherwise wait (module docs).

    ``limit``: the most a rank may hold (one number or one per rank; default each rank's peak
    in ``schedule``). ``slack``: the shortest wait, in W lengths, worth filling with a W.
    """
    spec = schedule.spec
    tab = tables(spec, costs)
    p, n, m = spec.num_ranks, spec.num_stages, spec.num_microbatches
    caps = per_rank_caps(limit, p, lambda: program_peaks(schedule, tab), "refill_w")
    eps = cap_tolerance(caps)
    # end[(code * n + s) * m + j]: code 0 = F, 1 = B or BW, 2 = W; -1 until scheduled
    nm = n * m
    end = [-1.0] * (3 * nm)
    seq = [[a for a in prog if a.kind is not Pass.W] for prog in schedule.programs]
    out: list[list[Action]] = [[] for _ in range(p)]
    pos = [0] * p
    clock = [0.0] * p
    held = [0.0] * p
    pending: list[deque[tuple[int, int]]] = [deque() for _ in range(p)]
    waiting: dict[int, list[int]] = {}
    heap = [(0.0, r) for r in range(p)]
    f_t, b_t, w_t = tab.f, tab.b, tab.w
    mem_f, mem_w = tab.mem_f, tab.mem_w
    last = n - 1

    def run(r: int, a: Action, start: float) -> None:
        s, j = a.stage, a.mb
        if a.kind is Pass.F:
            held[r] += mem_f[s]
            fin, code = start + f_t[s], 0
        elif a.kind is Pass.W:
            fin, code = start + w_t[s], 2
            held[r] -= mem_w[s]
        else:
            fused = a.kind is Pass.BW
            fin, code = start + b_t[s] + (w_t[s] if fused else 0.0), 1
            held[r] -= mem_f[s] if fused else mem_f[s] - mem_w[s]
            if not fused:
                pending[r].append((s, j))
        k = (code * n + s) * m + j
        end[k] = fin
        out[r].append(a)
        clock[r] = fin
        heapq.heappush(heap, (fin, r))
        for q in waiting.pop(k, ()):
            heapq.heappush(heap, (clock[q], q))

    def run_w(r: int, start: float) -> None:
        s, j = pending[r].popleft()
        run(r, Action(s, Pass.W, j), start)

    while heap:
        t, r = heapq.heappop(heap)
        if t != clock[r] or pos[r] > len(seq[r]):
            continue  # a stale entry
        if pos[r] == len(seq[r]):
            if pending[r]:
                run_w(r, t)
            else:
                pos[r] += 1  # done
            continue
        a = seq[r][pos[r]]
        s, j = a.stage, a.mb
        if a.kind is Pass.F and held[r] + mem_f[s] > caps[r] + eps:
            if not pending[r]:
                raise SpecError(
                    f"refill_w: rank {r} cannot start {a} within its limit {caps[r]:g} (holds "
                    f"{held[r]:g}, no W left to run); raise the limit to the schedule's peak"
                )
            run_w(r, t)
            continue
        # when can `a` start, as far as its dependencies are known?
        ready, missing, bound = 0.0, -1, 0.0
        deps: list[tuple[int, float, float]] = []  # (index, transfer, duration of the dep)
        if a.kind is Pass.F:
            if s > 0:
                deps.append(((s - 1) * m + j, tab.comm_act[s], f_t[s - 1]))
        else:
            deps.append((s * m + j, 0.0, f_t[s]))
            if s < last:
                deps.append((nm + (s + 1) * m + j, tab.comm_grad[s], b_t[s + 1]))
        for k, comm, d in deps:
            e = end[k]
            if e < 0:
                missing = k
                # not scheduled yet: it cannot end before its rank is free and it has run
                q = tab.rank_of[(k % nm) // m]
                bound = max(bound, max(clock[q], t) + d + comm)
            elif e + comm > ready:
                ready = e + comm
        wait = (bound if missing >= 0 else ready) - t
        if pending[r] and wait > eps and wait >= slack * w_t[pending[r][0][0]] - eps:
            run_w(r, t)
        elif missing >= 0:
            waiting.setdefault(missing, []).append(r)
        else:
            pos[r] += 1
            run(r, a, max(t, ready))
    stuck = [r for r in range(p) if pos[r] <= len(seq[r]) and (pos[r] < len(seq[r])
                                                               or pending[r])]
    if stuck:
        raise SpecError(f"refill_w: ranks {stuck} cannot finish; the input schedule's F/B "
                        f"order is not executable (validate it)")
    return Schedule(spec, tuple(tuple(o) for o in out), schedule.name)
