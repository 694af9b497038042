"""ZB-V: the zero-bubble V schedule at 1F1B's memory (V placement, v = 2, split B/W).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> sim = simulate(generate("zb-v", num_ranks=4, num_microbatches=8))
    >>> sim.bubble_rate, sim.peak_fraction
    (0.0, 1.0)
"""

from __future__ import annotations

from pipeblocks.errors import SpecError
from pipeblocks.generators.registry import register
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["zb_v"]


@register(
    "zb-v",
    placement=Placement.V,
    stages_per_rank=2,
    summary="zero bubble at 1F1B's memory on the V placement",
    source="Qi et al. 2024, Zero Bubble Pipeline Parallelism (ICLR), ZB-V",
)
def zb_v(spec: PipelineSpec) -> Schedule:
    """ZB-V: rank r holds s0 = r and s1 = 2p-1-r; phases with closed-form counts.

    Microbatches are padded to m' = max(m, 2p-1) (the warm-up needs 2p-1 of them on rank 0)
    and the padded ones' passes are dropped at the end, which keeps the schedule valid because
    no dependency crosses microbatches. Phases of rank r (docs/design.md, "Generation rules"):

    - ``nF0``: 2(p-r)-1 F(s0); ``nF1F0``: r times (F(s1), F(s0));
    - ``nF1B1W1``: p-r times (F(s1), B(s1), W(s1));
    - steady, while F(s1) lags F(s0) or F(s0) remain: [F(s0)], B(s0), W(s0), F(s1), B(s1), W(s1);
    - ``nB0B1``: r times (B(s0), B(s1)); ``nB0W0``: p-r times (B(s0), W(s0));
    - ``nW``: the deferred W(s1), then the W(s0) (see the note "W deferral" in
      :mod:`pipeblocks.ir`).

    Under unit costs and unit memory the bubble (paper metric) is zero once m >= 2p-1 (below,
    rank 0 idles 2p-1-m units) and no rank holds more than 2·min(m, p) chunk-activations (rank
    p-1 holds that many): at most 1F1B's peak.

    >>> print(zb_v(PipelineSpec(2, 3, 2, "v")))
    rank 0 | 0F0 0F1 0F2 3F0 3B0 3W0 3F1 3B1 3W1 0B0 0W0 3F2 3B2 3W2 0B1 0W1 0B2 0W2
    rank 1 | 1F0 2F0 1F1 2F1 2B0 2W0 1F2 1B0 1W0 2F2 2B1 2W1 1B1 2B2 1B2 1W1 2W2 1W2
    """
    if spec.placement is not Placement.V:  # the registry checks this; direct calls too
        raise SpecError(
            f"zb-v needs placement 'v' (got '{spec.placement.value}'); use "
            f"PipelineSpec(p, m, 2, 'v') or generate('zb-v', p, m)"
        )
    p, m = spec.num_ranks, spec.num_microbatches
    padded = max(m, 2 * p - 1)
    kinds = (Pass.F, Pass.B, Pass.W, Pass.F, Pass.B, Pass.W)
    programs = []
    for rank in range(p):
        # The program as pass codes first (list arithmetic is cheap), then one action per code
        # with per-code microbatch counters: codes 0-2 are F/B/W of s0, 3-5 of s1.
        f0, b0, w0, f1, b1, w1 = range(6)
        steady = padded - p  # iterations until F(s1) has caught up with m' microbatches
        with_f0 = padded - (2 * p - rank - 1)  # F(s0) left when the steady phase starts
        codes = (
            [f0] * (2 * (p - rank) - 1)  # nF0
            + [f1, f0] * rank  # nF1F0
            + [f1, b1, w1] * (p - rank)  # nF1B1W1
            + [f0, b0, w0, f1, b1, w1] * with_f0  # steady, F(s0) first while any remain
            + [b0, w0, f1, b1, w1] * (steady - with_f0)
            + [b0, b1] * rank  # nB0B1
            + [b0, w0] * (p - rank)  # nB0W0
            + [w1] * rank  # nW: the deferred W(s1), then W(s0) (note "W deferral")
            + [w0] * rank
        )
        stage = (rank,) * 3 + (2 * p - 1 - rank,) * 3
        count = [0] * 6
        prog = []
        for c in codes:
            j = count[c]
            count[c] = j + 1
            if j < m:  # drop the padded microbatches
                prog.append(Action(stage[c], kinds[c], j))
        programs.append(prog)
    return Schedule.from_lists(spec, programs)
