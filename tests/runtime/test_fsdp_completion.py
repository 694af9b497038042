"""FSDP2 under the pipeline, completed (issue 17): parameter memory as the simulator says,
pipeline-wide clipping and tied weights across dp shards, against the unpartitioned model.
Real gloo processes on dp 2 x pp 2 (tests/runtime/fsdp_worker.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeblocks.generators import generate
from pipeblocks.runtime.launch import launch
from pipeblocks.sim.collectives import Link, Network
from pipeblocks.sim.costs import UniformCosts
from pipeblocks.sim.fsdp import simulate_fsdp

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import fsdp_worker as fw  # noqa: E402

NET = Network(gpus_per_node=8, intra=Link(1e9), inter=Link(1e9))


def _run(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "out.json"
    res = launch([sys.executable, str(HERE / "fsdp_worker.py"), args[0], str(out), *args[1:]],
                 fw.DP * fw.PP, deadline=300)
    assert res.fault == "" and res.codes == (0,) * 4, res
    return list(json.loads(out.read_text()))


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name,raf", [("1f1b", "raf"), ("v-half", "raf"),
                                      ("v-half", "no-raf")])
def test_fsdp_parameter_memory_at_the_peak_is_the_simulators(name: str, raf: str,
                                                            tmp_path: Path) -> None:
    """Each rank's peak of live parameter + gradient storage (sampled inside every pass and
    after every FSDP op, fsdp_worker.live_bytes) is simulate_fsdp's peak within 5%."""
    rows = _run(tmp_path, "memory", name, "fsdp", raf)
    sizes: dict[int, int] = {}
    for row in rows:
        sizes.update({int(s): b for s, b in row["sizes"].items()})
    schedule = generate(name, num_ranks=fw.PP, num_microbatches=fw.M)
    sim = simulate_fsdp(schedule, UniformCosts(), param_bytes=[sizes[s] for s in sorted(sizes)],
                        dp=fw.DP, network=NET, reshard_after_forward=raf == "raf")
    for row in rows:
        want = sim.peak_bytes[row["coords"][1]]
        assert row["peak"] == pytest.approx(want, rel=0.05), (row, want)
