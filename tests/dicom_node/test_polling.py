"""PollingThread: passes at the interval or when woken, one warning per outage."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from dicom_node.polling import PollingThread


def test_one_warning_per_outage_and_one_line_when_it_works_again(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = iter([RuntimeError("db locked")] * 3 + [None] * 100)
    passes = threading.Semaphore(0)

    def step() -> None:
        passes.release()
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    log = logging.getLogger("srnode.test.polling")
    poller = PollingThread("test-poll", step, 0.01, "test pass", log)
    with caplog.at_level(logging.INFO, logger=log.name):
        poller.start()
        for _ in range(6):
            assert passes.acquire(timeout=5)
        poller.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert messages == ["test pass failed (RuntimeError: db locked); retrying every 0.01 s", "test pass works again"]
    assert poller.stopping


def test_wake_runs_a_pass_before_the_interval() -> None:
    ran = threading.Event()
    count = [0]

    def step() -> None:
        count[0] += 1
        if count[0] > 1:
            ran.set()

    poller = PollingThread("test-wake", step, 60, "test pass", logging.getLogger("srnode.test.polling"))
    poller.start()
    time.sleep(0.2)  # the first pass ran; the next is 60 s away
    t0 = time.monotonic()
    poller.wake()
    assert ran.wait(5) and time.monotonic() - t0 < 5
    poller.stop()
