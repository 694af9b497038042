"""The emulated pass: it never ends early, and its timer set-up runs once per thread."""

from __future__ import annotations

import threading
import time

import pytest

import pipeblocks.runtime.emulate as emulate


def test_emulated_sleep_never_ends_early() -> None:
    """Each call lasts at least the time asked (the spin covers an early wake-up)."""
    for seconds in (0.0, 0.0005, 0.002):
        for _ in range(5):
            t = time.perf_counter()
            emulate.emulated_sleep(seconds)
            assert time.perf_counter() - t >= seconds


def test_timer_set_up_once_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer slack is a thread's setting: asked for once in each new thread, then cached."""
    calls: list[str] = []

    def fake() -> bool:
        calls.append(threading.current_thread().name)
        return True

    monkeypatch.setattr(emulate, "_tight_timer_slack", fake)
    monkeypatch.setattr(emulate, "_thread", threading.local())

    def work() -> None:
        for _ in range(3):
            emulate.emulated_sleep(0.0001)

    threads = [threading.Thread(target=work, name=f"t{i}") for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(calls) == ["t0", "t1"]


def test_timer_slack_answers_a_bool() -> None:
    """The set-up says whether the tight slack took (a bool), so the spin length is chosen."""
    assert isinstance(emulate._tight_timer_slack(), bool)
