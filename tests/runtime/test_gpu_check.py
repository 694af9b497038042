"""benchmarks/gpu_check.py runs on the CPU (small sizes): gradients agree, a costs file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeblocks.sim import parse_costs

pytestmark = pytest.mark.torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_check  # noqa: E402


def test_gpu_check_on_the_cpu(tmp_path, capsys) -> None:
    """Split equals fused (fp32, bf16, bf16 checkpointed); the profile is a valid costs file."""
    out, costs = tmp_path / "r.json", tmp_path / "c.json"
    assert gpu_check.main(["--device", "cpu", "--out", str(out), "--costs", str(costs)]) == 0
    r = json.loads(out.read_text())
    assert r["ok"] and set(r["grad_rel_diff"]) == {"fp32", "bf16", "bf16_checkpointed"}
    assert r["cost"]["bw_ms"] > 0 and r["cost"]["split_over_fused"] > 0
    assert parse_costs(json.loads(costs.read_text())).memory_unit == "bytes"
    assert json.loads(capsys.readouterr().out.strip())["ok"]
