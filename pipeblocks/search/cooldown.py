"""A tight cool-down for V schedules: the backward chains of the last microbatches packed.

A repeated V block keeps its stable pattern to the end, and neither closing gaps
(:func:`pipeblocks.blocks.reorder`) nor list scheduling by the critical path
(:mod:`pipeblocks.search.tail`) changes much there: a rank that still holds k activations
after its last forward pass needs the backward passes of k microbatches to reach it as fast as
the dependencies allow. The CM paper re-plans the cool-down of its V schedules by a fixed
pattern (Qi, Wan, Amar, Lin 2024, arXiv 2405.15362, section 4 and its code's cool-down step);
:func:`tight_cooldown` builds that pattern on a slot layout (unit passes):

- ``a`` is the slot of rank 0's last chunk-1 F (stage 2p-1, where the last microbatch's
  forward ends), ``h`` the activations a rank may hold (the search uses the block's own
  stable-phase peak).
- On rank i, the chunk-0 B's (stage i) of the last ceil(h/2) microbatches and the chunk-1 B's
  (stage 2p-1-i) of the last min(i+1, floor(h/2)) are taken out of the layout, with trailing
  W's (from the end back) until at least as many W's of each chunk, and h in all, are out.
- The B's go back as two unbroken chains, two slots between microbatches: chunk 1's down
  the ranks right after ``a`` (the last microbatch's at ``a + 1 + i``), chunk 0's back up
  (its at ``a + 2p - i``). These are the earliest slots the dependencies allow when the last
  microbatch's F's arrive without delay.
- The W's go into the free slots after the rank's last W left in place, chunk 1's first (it
  frees what the next chunk-1 B needs); any left over go at the end. Every W is then the
  oldest of its stage still waiting (W deferral, the note in :mod:`pipeblocks.ir`).

The result keeps each rank's order and is timed by the simulator as usual. On unit costs this
is what meets the paper's bound 6p - 1 - 3k at every budget k below 2p - 1 (tests/search/
test_bound.py); at other costs it is one more candidate that the search simulates.

    >>> from pipeblocks.blocks import reorder, repeat, squeeze
    >>> from pipeblocks.blocks.fill import fill_w
    >>> from pipeblocks.search.vshape import VParams, v_block_of
    >>> from pipeblocks.sim import simulate
    >>> block = fill_w(v_block_of(4, VParams(f1=3, b1=4, b0=5, k0=1, k1=1, split=3)))
    >>> layout = reorder(repeat(block, 16))  # p = 4, m = 16, 5 activations per rank
    >>> max(simulate(squeeze(layout)).span), max(simulate(tight_cooldown(layout, 5)).span)
    (53.0, 52.0)

    (The longest span: 96 slots of work per rank and 8 idle, the paper's bound for k = 5.)
"""

from __future__ import annotations

from pipeblocks.blocks.layout import Layout
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import Placement

__all__ = ["tight_cooldown"]


def tight_cooldown(layout: Layout, held: int, name: str = "") -> Schedule | None:
    """``layout``'s schedule with its cool-down re-planned (module docs); None when the
    pattern's slots are taken on some rank (the layout's tail is too short for it).

    ``layout``: a timed layout of a V block with unit passes (from
    :func:`pipeblocks.blocks.reorder`); ``held``: how many activations a rank may hold. The
    pattern assumes the last microbatch's passes come without delay, so the result could break
    a dependency or hold more than ``held`` (the tests found neither over random blocks, but
    a template is no proof): simulate it and check its peak before using it, as the search
    does.
    """
    block = layout.block
    p, m = block.num_ranks, layout.num_microbatches
    if block.placement is not Placement.V or block.stages_per_rank != 2:
        raise SpecError(f"tight_cooldown needs a V block with 2 stages per rank (got "
                        f"{block.placement.value}, {block.stages_per_rank} per rank)")
    if any(bp.duration != 1 for bp in block.passes):
        raise SpecError("tight_cooldown needs unit passes (every block pass one slot long)")
    if held < 1:
        raise SpecError(f"tight_cooldown needs held >= 1 (got {held})")
    rows = _rows(layout)
    last_stage = 2 * p - 1
    anchor = max((t for t, a in enumerate(rows[0])
                  if a is not None and a.kind is Pass.F and a.stage == last_stage), default=-1)
    if anchor < 0:
        return None
    n0 = min((held + 1) // 2, m)
    n1_most = min(held - n0, m)
    reach = anchor + 2 * p + 1  # the last slot the pattern uses, plus one
    for i, row in enumerate(rows):
        if len(row) < reach:
            row.extend([None] * (reach - len(row)))
        if not _repack(row, i, p, m, anchor, n0, min(i + 1, n1_most), held):
            return None
    programs = []
    for i, row in enumerate(rows):
        programs.append(_with_ws(row, i, 2 * p - 1 - i))
    return Schedule(layout.spec, tuple(programs), name)


def _rows(layout: Layout) -> list[list[Action | None]]:
    """Per rank, the action starting in each slot (None: idle)."""
    block = layout.block
    n = len(block.passes)
    size = max(layout.starts, default=-1) + 1
    rows: list[list[Action | None]] = [[None] * size for _ in range(block.num_ranks)]
    ranks = block.pass_ranks  # a property that builds a tuple: read it once
    kinds = [(rows[ranks[op]], bp.stage, bp.kind) for op, bp in enumerate(block.passes)]
    for key, start in enumerate(layout.starts):
        row, stage, kind = kinds[key % n]
        row[start] = Action(stage, kind, key // n)
    return rows


def _repack(row: list[Action | None], i: int, p: int, m: int, anchor: int, n0: int, n1: int,
            held: int) -> bool:
    """Take rank i's last B's and trailing W's out of ``row`` and put the B's back as the
    two chains (module docs); False when a chain slot is taken."""
    s0, s1 = i, 2 * p - 1 - i
    for t, a in enumerate(row):
        if a is not None and a.kind is Pass.B and (
                (a.stage == s0 and a.mb >= m - n0) or (a.stage == s1 and a.mb >= m - n1)):
            row[t] = None
    w0 = w1 = 0
    for t in range(len(row) - 1, -1, -1):
        if w0 >= n0 and w1 >= n1 and w0 + w1 >= held:
            break
        a = row[t]
        if a is not None and a.kind is Pass.W:
            row[t] = None
            w0, w1 = (w0 + 1, w1) if a.stage == s0 else (w0, w1 + 1)
    for j in range(n1):  # chunk 1 down the ranks, right after rank 0's last chunk-1 F
        t = anchor + 1 + i - 2 * j
        if t < 0 or row[t] is not None:
            return False
        row[t] = Action(s1, Pass.B, m - 1 - j)
    for j in range(n0):  # chunk 0 back up, the last microbatch's reaching rank 0 last
        t = anchor + 2 * p - i - 2 * j
        if t < 0 or row[t] is not None:
            return False
        row[t] = Action(s0, Pass.B, m - 1 - j)
    return True


def _with_ws(row: list[Action | None], s0: int, s1: int) -> tuple[Action, ...]:
    """The rank's program: its passes in slot order, the W's taken out put back into free
    slots after its last W left in place (chunk 1's first), each W the oldest of its stage."""
    last_w = max((t for t, a in enumerate(row) if a is not None and a.kind is Pass.W),
                 default=-1)
    waiting = {s0: 0, s1: 0}  # B's without their W, per stage, up to the current slot
    kinds: list[tuple[int, Pass]] = []
    for t, a in enumerate(row):
        if a is not None:
            if a.kind is Pass.B:
                waiting[a.stage] += 1
            elif a.kind is Pass.W:
                waiting[a.stage] -= 1
            kinds.append((a.stage, a.kind) if a.kind is Pass.W else (-1, a.kind))
            continue
        if t > last_w:
            for s in (s1, s0):
                if waiting[s] > 0:
                    waiting[s] -= 1
                    kinds.append((s, Pass.W))
                    break
    kinds += [(s1, Pass.W)] * waiting[s1] + [(s0, Pass.W)] * waiting[s0]
    # W identities: a stage's j-th W belongs to its j-th B (the oldest still waiting)
    b_mbs: dict[int, list[int]] = {s0: [], s1: []}
    for a in row:
        if a is not None and a.kind is Pass.B:
            b_mbs[a.stage].append(a.mb)
    out: list[Action] = []
    next_w = {s0: 0, s1: 0}
    passes = iter(a for a in row if a is not None and a.kind is not Pass.W)
    for stage, kind in kinds:
        if kind is Pass.W:
            out.append(Action(stage, Pass.W, b_mbs[stage][next_w[stage]]))
            next_w[stage] += 1
        else:
            out.append(next(passes))
    return tuple(out)
