"""One torch thread per test process: the machine has 2 cores shared by everything."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# The worker scripts run as programs (each imports its neighbours by file name); they hold no
# doctests, and importing them as test modules would fail.
collect_ignore_glob = ["*_worker.py"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
