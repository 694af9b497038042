"""Offload as schedule data: the IR, the formats, the simulator's link, memory and search."""

from __future__ import annotations

import json
import logging
import math

import pytest

from pipeblocks.errors import FormatError, ScheduleError, SpecError
from pipeblocks.generators import generate, names
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.formats import dumps, loads
from pipeblocks.ir.lowering import lower
from pipeblocks.ir.moves import Move, MoveKind, Offload, OffloadLink
from pipeblocks.ir.offload import eligible, parse_link, parse_offload, with_moves, with_offload
from pipeblocks.ir.recompute import with_recompute
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.validate import validate
from pipeblocks.search.offload import auto_offload
from pipeblocks.sim import UniformCosts, simulate

COSTS = [UniformCosts(), UniformCosts(f=1, b=2, w=1, comm=0.25)]


def _empty(s: Schedule) -> Schedule:
    return Schedule(s.spec, s.programs, s.name, s.recompute, Offload(frozenset()))


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("costs", COSTS, ids=["unit", "skewed"])
def test_no_pairs_times_like_the_engine(name: str, costs: UniformCosts) -> None:
    """The offload clock with nothing to move gives the engine's times and peaks exactly."""
    s = generate(name, 4, 8)
    plain, clocked = simulate(s, costs), simulate(_empty(s), costs)
    assert clocked.starts == plain.starts and clocked.ends == plain.ends
    assert clocked.peak_memory == plain.peak_memory and clocked.host_peak == (0.0,) * 4


@pytest.mark.parametrize("name", names())
def test_copies_follow_the_link_model(name: str) -> None:
    """Every offload starts at or after its F's end, every reload after its offload ended and
    before its B starts; an instant link costs no time and holds no more than the plain
    schedule; device and host memory return to 0; host memory is never negative."""
    s = generate(name, 4, 8)
    plain = simulate(s)
    for link in (OffloadLink(), OffloadLink(0.5, 0.1)):
        sim = simulate(with_offload(s, link=link))
        spans = {sp.action: sp for rank in sim.spans for sp in rank}
        moves = {(mv.move.kind, mv.move.stage, mv.move.mb): mv for rank in sim.moves
                 for mv in rank}
        assert sim.schedule.offload is not None
        for st, j in sim.schedule.offload.pairs:
            off, rel = moves[(MoveKind.OFFLOAD, st, j)], moves[(MoveKind.RELOAD, st, j)]
            f = next(sp for a, sp in spans.items() if (a.stage, a.mb, a.kind) == (st, j, Pass.F))
            b = next(sp for a, sp in spans.items()
                     if (a.stage, a.mb) == (st, j) and a.kind.frees_input_grad)
            assert f.end <= off.start <= off.end <= rel.start <= rel.end <= b.start + 1e-12
        for rank in range(4):
            assert sim.memory[rank][-1][1] == pytest.approx(0.0, abs=1e-9)
            assert sim.host_memory[rank][-1][1] == pytest.approx(0.0, abs=1e-9)
            assert min(h for _, h in sim.host_memory[rank]) >= -1e-9
        if math.isinf(link.bandwidth) and not link.latency:
            assert sim.makespan == plain.makespan
            assert all(a <= b for a, b in zip(sim.peak_memory, plain.peak_memory, strict=True))


def test_a_slow_link_delays_and_a_shared_link_delays_more() -> None:
    """Copies slower than the compute between F and B delay the B; sharing the link with the
    pipeline transfers adds the transfers' wait."""
    s = generate("1f1b", 4, 8)
    costs = UniformCosts(comm=0.5)
    base = simulate(s, costs).makespan
    own = simulate(with_offload(s, link=OffloadLink(0.5)), costs).makespan
    shared = simulate(with_offload(s, link=OffloadLink(0.5, 0.0, True)), costs).makespan
    assert base < own <= shared
    assert simulate(with_offload(s, link=OffloadLink(1e9, 0.0, True)), costs).makespan == \
        pytest.approx(base)


def test_offload_lowers_to_move_ops() -> None:
    """Each pair gets an offload after its F's sends and a reload before the pass that precedes
    its B; a schedule without offload lowers as before."""
    s = with_offload(generate("gpipe", 2, 4))
    low = with_moves(lower(s))
    for rank, prog in enumerate(low.programs):
        for st, j in s.offload.pairs:  # type: ignore[union-attr]
            if s.spec.rank_of(st) != rank:
                continue
            ops = list(prog)
            off, rel = (ops.index(Move(k, st, j)) for k in (MoveKind.OFFLOAD, MoveKind.RELOAD))
            f = next(i for i, o in enumerate(ops)
                     if getattr(o, "kind", None) is Pass.F and (o.stage, o.mb) == (st, j))
            b = next(i for i, o in enumerate(ops) if getattr(o, "kind", None) is Pass.BW
                     and (o.stage, o.mb) == (st, j))
            assert f < off < rel < b
    plain = lower(generate("gpipe", 2, 4))
    assert with_moves(plain) is plain


def test_validator_names_the_broken_offload_rule() -> None:
    """Out-of-range pairs, recomputed stages and pairs whose B follows their F at once are
    refused with the pair named."""
    s = generate("1f1b", 2, 4)
    bad = [(5, 0), (0, 9)]
    for pair in bad:
        with pytest.raises(ScheduleError, match="outside"):
            validate(Schedule(s.spec, s.programs, "", frozenset(), Offload(frozenset({pair}))))
    with pytest.raises(ScheduleError, match="recomputed"):
        with_offload(with_recompute(s, [0]), [(0, 0)])
    with pytest.raises(ScheduleError, match="right after"):
        with_offload(s, [(1, 0)])  # the last stage runs B right after its F
    assert (1, 0) not in eligible(s)


def test_offload_round_trips_through_json_and_csv_drops_it(caplog) -> None:
    """Pairs and link survive dumps/loads (an instant link as null); the CSV warns."""
    for link in (OffloadLink(), OffloadLink(2.5, 0.1, True)):
        s = with_offload(generate("zb-v", 4, 8), link=link)
        back = loads(dumps(s, "json"), "json")
        assert back.offload == s.offload
    text = dumps(with_offload(generate("1f1b", 2, 4)), "json")
    assert json.loads(text)["offload"]["link"]["bandwidth"] is None
    with pytest.raises(FormatError, match=r"offload.pairs\[0\]"):
        loads(text.replace('"pairs": [[0, 0]', '"pairs": [[0]'), "json")
    with caplog.at_level(logging.WARNING):
        dumps(with_offload(generate("1f1b", 2, 4)), "torch-csv")
    assert "no offload column" in caplog.text


def test_parse_offload_and_link() -> None:
    """all / none / auto / FRACTION (of each stage's pairs, earliest first); the link text."""
    s = generate("gpipe", 2, 4)
    assert parse_offload("all", s) == eligible(s) and parse_offload("none", s) == []
    assert parse_offload("auto", s) == "auto"
    assert parse_offload("0.5", s) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with pytest.raises(SpecError, match="fraction in"):
        parse_offload("1.5", s)
    assert parse_link("2,0.1,shared") == OffloadLink(2.0, 0.1, True)
    with pytest.raises(SpecError, match="BANDWIDTH"):
        parse_link("fast")
    with pytest.raises(SpecError, match="bandwidth > 0"):
        parse_link("0")


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "v-half", "zb-v"])
def test_auto_offload_meets_the_budget(name: str) -> None:
    """The greedy search's schedule fits the budget on every rank, offloads no more than all
    eligible pairs, and a budget below what offloading everything reaches is refused."""
    s = generate(name, 4, 8)
    link = OffloadLink(2.0)
    everything = simulate(with_offload(s, link=link))
    budget = (everything.peak_fraction + simulate(s).peak_fraction) / 2
    chosen = auto_offload(s, budget, link=link)
    assert simulate(chosen).peak_fraction <= budget + 1e-9
    pairs = chosen.offload.pairs if chosen.offload else frozenset()
    assert pairs <= set(eligible(s))
    with pytest.raises(SpecError, match="below what offload reaches"):
        auto_offload(s, everything.peak_fraction * 0.9, link=link)


def test_cli_simulate_and_search_take_offload(capsys) -> None:
    """`simulate --offload all --json` reports the pairs and host peaks; `search --offload
    auto` meets a budget below what schedules alone reach."""
    from pipeblocks.cli.main import main

    assert main(["simulate", "gpipe", "-p", "4", "-m", "8", "--offload", "all",
                 "--offload-link", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["offload"]["host_peak"] == [7.0, 7.0, 7.0, 7.0] and out["peak_memory"][0] == 3.0
    argv = ["search", "-p", "4", "-m", "8", "--memory", "0.4", "--family", "v", "--json"]
    assert main(argv) == 2  # below V-Min: no V schedule alone fits
    capsys.readouterr()
    assert main([*argv, "--offload", "auto", "--offload-link", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peak_fraction"] <= 0.4 and "offload" in out["how"]
