"""Checks shared by the tests of srnode's adapters to library internals (pynetdicom, kombu)."""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT

SCANNED = ("srnode", "config", "dicom_node", "sr_engine", "workers", "training", "bench")


def uses_outside(private: re.Pattern[str], adapter: Path) -> list[str]:
    """`path:line: text` of every line of the project's code that matches `private`, except in `adapter`."""
    found = []
    for package in SCANNED:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path == adapter:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if private.search(line):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    return found


def consume(conn: Any, channel: Any, queues: list[Any], count: int, take: Callable[[Any, Any], Any],
            timeout_s: float = 10) -> list[Any]:
    """What a prefetch-1 kombu consumer on `queues` takes, in order (`take(body, message)` each),
    until `count` messages or `timeout_s`."""
    from kombu import Consumer

    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(take(body, message))
        message.ack()

    with Consumer(channel, queues=queues, callbacks=[on_message], accept=["json"], prefetch_count=1):
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    return got
