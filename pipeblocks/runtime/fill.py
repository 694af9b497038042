"""The executor's fill hook: run small user tasks in this rank's idle gaps (docs/fill.md).

The fill plan is data: :func:`pipeblocks.sim.fill.place_fill` gives each rank its *slots*
(the simulated gaps, each before a numbered pass of the rank's program). Before each pass the
executor calls :meth:`FillRunner.gap`; when a slot lies before that pass and the pass's input
has not arrived yet, the runner starts queue tasks one at a time while

- the time spent in this gap plus the task's estimate (corrected by the largest ratio of
  measured to estimated duration among the last ``_RATIOS`` tasks) stays within the gap it
  expects, less the ``safety`` fraction, plus ``max_delay``: the simulated gap (times
  ``seconds_per_unit``) until this slot has been measured, then the shortest of its last
  ``_KEEP`` measurements;
- the task's memory fits the headroom (``headroom()`` bytes, e.g. free device memory);
- the input has not arrived yet, where the transport can tell (checked between tasks; NCCL
  can, gloo cannot before ``wait``, so on gloo the expected gap alone decides).

The wait before a rank's first pass (its input comes about r passes after rank 0 starts) is a
slot like the others. The wait after its last pass (the *tail*: until the slowest rank ends the
step) has no input to wait for: at the end of the program (its sends complete) the runner fills
it up to the simulated tail, less the safety fraction, from that moment.

A gap is measured from the hook to the moment the pass's input is there; when the pass still
waited after the fill, that is the gap exactly, otherwise the input came during the fill: the
gap is unknown and shorter, so half the fill time counts as its measurement (the shortest
recent one wins: gaps drift with the machine's load, and an overrun costs more than an
unused millisecond).

So a task never starts when it would delay the next pass beyond ``max_delay`` by the runner's
own estimate; :attr:`FillRunner.max_overrun` reports the most a gap's fill ran past the gap it
expected. A task that raises stops the fill queue (its error is kept in :attr:`errors`), never
the training step; a task whose estimate exceeds every gap is never started and is listed in
:attr:`never_started`. Each run task is recorded on the simulated clock
(:attr:`spans`) so the picture (:func:`pipeblocks.visual.fill.fill_figure`) shows where it ran.

    >>> import pipeblocks as pb
    >>> from pipeblocks.sim.fill import place_fill
    >>> sim = pb.simulate(pb.generate("1f1b", 2, 4))
    >>> runner = FillRunner(sim.schedule, 0, place_fill(sim, []).slots[0],
    ...                     [FillWork(lambda: None, 0.001)] * 3, seconds_per_unit=0.02)
    >>> runner.report()["fill_tasks_done"]
    0
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.lowering import Payload, Transfer
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.fill import FillSlot, FillSpan

__all__ = ["FillWork", "FillRunner", "second_model_work"]

log = logging.getLogger(__name__)

_KEEP = 4
"""Measurements kept per slot; the shortest is the gap expected next."""

_RATIOS = 16
"""Tasks whose measured over estimated duration is kept; the largest corrects the next
estimate (one slow task, say the machine was busy, weighs for this many tasks, not forever)."""

_WAITED = 2e-4
"""Seconds a pass must still wait for its input after the fill for the gap to count as
measured exactly (below it the input may have come during the last task: gloo cannot tell
whether a receive is complete before ``wait``)."""


@dataclass(frozen=True, slots=True)
class FillWork:
    """A fill task: ``fn()`` run in a gap; ``seconds`` its estimated duration, ``memory`` the
    bytes it needs while it runs; ``name`` for the report and the picture. ``fn`` returning
    ``False`` means it could not run yet (did nothing): it stays at the queue's head."""

    fn: Callable[[], Any]
    seconds: float
    memory: float = 0.0
    name: str = "fill"

    def __post_init__(self) -> None:
        if not callable(self.fn) or not self.seconds > 0 or not self.memory >= 0:
            raise SpecError(
                f"a fill task needs a callable, seconds > 0 and memory >= 0 (got fn="
                f"{self.fn!r}, seconds={self.seconds}, memory={self.memory}); e.g. "
                f"FillWork(step_fn, seconds=0.005)")


class FillRunner:
    """Runs ``tasks`` (in order) in rank ``rank``'s gaps ``slots`` of ``schedule``.

    ``seconds_per_unit`` converts the simulator's time unit into seconds; ``max_delay`` (s) is
    the bound on the delay a task may add to the next pass by the runner's estimate; ``safety``
    the fraction of each expected gap kept free (gaps drift from step to step);
    ``headroom()`` gives the bytes free for fill now (default: unlimited); ``at_end()`` runs
    at the end of each step's program, before the optimizer step.
    """

    def __init__(self, schedule: Schedule, rank: int, slots: Sequence[FillSlot],
                 tasks: Iterable[FillWork], *, seconds_per_unit: float,
                 max_delay: float = 0.0, safety: float = 0.1,
                 headroom: Callable[[], float] | None = None,
                 at_end: Callable[[], None] | None = None) -> None:
        if not seconds_per_unit > 0 or not max_delay >= 0 or not 0 <= safety < 1:
            raise SpecError(f"fill needs seconds_per_unit > 0, max_delay >= 0 and 0 <= safety "
                            f"< 1 (got {seconds_per_unit}, {max_delay}, {safety}); e.g. "
                            f"seconds_per_unit=0.02, max_delay=0.0, safety=0.1")
        self.spec = schedule.spec
        self.rank = rank
        self.index = {a: k for k, a in enumerate(schedule.programs[rank])}
        n = len(schedule.programs[rank])  # the tail slot (after the last pass): the end hook
        self.slots = {s.before: s for s in slots if s.before < n}
        self.tail = next((s for s in slots if s.before >= n), None)
        self.spu = seconds_per_unit
        self.max_delay = max_delay
        self.safety = safety
        self.headroom = headroom
        self.at_end = at_end
        self.queue: deque[FillWork] = deque(tasks)
        self.measured: dict[int, deque[float]] = {}  # slot -> its last gaps (s)
        self.ratios: deque[float] = deque([1.0], maxlen=_RATIOS)  # measured / estimated
        self.done = 0
        self.fill_seconds = 0.0
        self.max_overrun = 0.0
        self.memory_waits = 0
        self.errors: list[str] = []
        self.never_started: list[str] = []
        self.spans: list[FillSpan] = []
        self.steps = 0
        self._open: tuple[int, float, float] | None = None  # slot, hook time, fill's end
        self._st: Any = None  # the executor's state of the step in progress
        self._drop_too_long()

    def set_unit(self, seconds_per_unit: float) -> None:
        """A new length of the simulator's time unit (measured); tasks that now fit no gap
        leave the queue, reported."""
        self.spu = seconds_per_unit
        self._drop_too_long()

    # -- the hook ----------------------------------------------------------------------------

    def gap(self, action: Action | None, st: Any) -> None:
        """Called by the executor before ``action`` (its inputs' receives already posted) and
        with None at the end of the program, before the optimizer step (then ``at_end`` runs:
        e.g. :meth:`EvalFill.end_step`); an evaluation step (``st.evaluate``) gets no fill."""
        if st is not self._st:  # a new step: the last one's final gap is measured now
            self._close(self._st)
            self._st = st
            self.steps += 1
        self._close(st)
        if st.evaluate:
            return
        if action is None:
            if self.tail is not None and self.queue:  # the wait for the step's end
                t0 = time.perf_counter()
                self._fill(self.tail, [], t0, self.tail.length * self.spu)
            if self.at_end is not None:  # after the tail: eval work stays in its step
                self.at_end()
            return
        k = self.index.get(action)
        slot = self.slots.get(k) if k is not None else None
        if slot is None or not self.queue:
            return
        works = self._works(action, st)
        if works is None:
            return
        t0 = time.perf_counter()
        seen = self.measured.get(k)
        expect = min(seen) if seen else slot.length * self.spu
        self._open = (k, t0, self._fill(slot, works, t0, expect))

    def report(self) -> dict[str, Any]:
        """What fill did on this rank (JSON-ready)."""
        self._close(self._st)
        extra = getattr(self.headroom, "report", None)  # runtime.fill_memory.Headroom
        return {
            "rank": self.rank, "fill_tasks_done": self.done, "fill_seconds": self.fill_seconds,
            "fill_left": len(self.queue), "fill_max_delay": self.max_delay,
            "fill_max_overrun": self.max_overrun, "fill_memory_waits": self.memory_waits,
            "fill_errors": list(self.errors), "fill_never_started": list(self.never_started),
        } | (extra() if callable(extra) else {})

    # -- inside -------------------------------------------------------------------------------

    def _fill(self, slot: FillSlot, works: list[Any], t0: float, expect: float) -> float:
        """Run tasks while they fit; the time the fill ended."""
        now = t0
        while self.queue:
            task = self.queue[0]
            ratio = max(self.ratios)
            if now - t0 + task.seconds * ratio > expect * (1 - self.safety) + self.max_delay:
                break
            if task.memory > 0 and self.headroom is not None and task.memory > self.headroom():
                self.memory_waits += 1
                break
            if works and all(w.is_completed() for w in works):  # NCCL knows; gloo: False
                break
            self.queue.popleft()
            ran = self._run(task)
            if ran is not True:
                if ran is False:  # not ready (an eval pass without its input): keep it
                    self.queue.appendleft(task)
                break
            end = time.perf_counter()
            unit0 = slot.start + (now - t0) / self.spu
            self.spans.append(FillSpan(self.rank, self.done, task.name, unit0,
                                       unit0 + (end - now) / self.spu))
            self.done += 1
            self.fill_seconds += end - now
            self.ratios.append(max(1.0, (end - now) / task.seconds))
            self.max_overrun = max(self.max_overrun, end - t0 - expect)
            now = end
        return now

    def _run(self, task: FillWork) -> bool | None:
        """True: it ran; False: it answered False (not ready, nothing done); None: it raised."""
        try:
            if task.fn() is False:
                return False
        except Exception as e:  # a fill task's failure stops the queue, never the step
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.errors.append(f"rank {self.rank}: fill task {task.name!r} raised "
                               f"{type(e).__name__}: {text[:300]}; the fill queue stopped "
                               f"({len(self.queue)} tasks left), training goes on")
            log.warning("%s", self.errors[-1])
            self.queue.clear()
            return None
        return True

    def _close(self, st: Any) -> None:
        """Measure the gap of the last slot used: from its hook to its pass's input ready."""
        if self._open is None or st is None:
            return
        k, t0, fill_end = self._open
        self._open = None
        seen = self.measured.setdefault(k, deque(maxlen=_KEEP))
        if st.ready - fill_end > _WAITED:  # the pass still waited after the fill: exact gap
            seen.append(st.ready - t0)
        else:  # the input came during the fill: the gap is unknown and shorter
            seen.append(0.5 * (fill_end - t0))

    def _works(self, action: Action, st: Any) -> list[Any] | None:
        """The posted receives ``action`` waits for (None when its input is local)."""
        s, last = action.stage, self.spec.num_stages - 1
        if action.kind is Pass.F and s > 0:
            t = Transfer(Payload.ACT, s - 1, s, action.mb)
        elif action.kind in (Pass.B, Pass.BW) and s < last:
            t = Transfer(Payload.GRAD, s + 1, s, action.mb)
        else:
            return None
        posted = st.posted.get(t)
        return [w for w, _ in posted] if posted else None

    def _drop_too_long(self) -> None:
        """Tasks longer than the most any gap may take leave the queue, reported."""
        every = [*self.slots.values(), *([self.tail] if self.tail is not None else [])]
        longest = max((s.length for s in every), default=0.0) * self.spu
        longest = longest * (1 - self.safety) + self.max_delay
        keep: deque[FillWork] = deque()
        dropped: dict[tuple[str, float], int] = {}  # one line per kind of task, with a count
        for task in self.queue:
            if task.seconds > longest:
                dropped[(task.name, task.seconds)] = dropped.get((task.name, task.seconds), 0) + 1
            else:
                keep.append(task)
        self.queue = keep
        for (name, seconds), count in dropped.items():
            self.never_started.append(
                f"rank {self.rank}: {count} fill task(s) {name!r} ({seconds * 1e3:.3g} ms) "
                f"longer than every gap ({longest * 1e3:.3g} ms, less the safety fraction, "
                f"plus the delay bound); never started")


def second_model_work(model: Any, optimizer: Any, batch: Callable[[], tuple[Any, Any]],
                      loss_fn: Callable[[Any, Any], Any], *, seconds: float,
                      losses: list[float] | None = None, name: str = "side-step") -> FillWork:
    """A fill task that trains a second, rank-local model one step: ``batch()`` gives
    ``(inputs, targets)``; each step's loss is appended to ``losses`` when given. Repeat the
    task in the queue for several steps (``[work] * 100``)."""
    import torch

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        x, y = batch()
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            loss.backward()
        optimizer.step()
        if losses is not None:
            losses.append(float(loss))

    return FillWork(step, seconds, name=name)
