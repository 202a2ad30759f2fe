"""One background loop shape for the node's table-driven services (assembly, dispatch, outbox).

Each runs a pass every `interval_s`, sooner when woken; a pass that fails (database locked, broker
away) is retried at the next interval and logged once per outage, not once per pass.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class PollingThread:
    """Run `step()` in a daemon thread every `interval_s` seconds until stopped."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float, what: str,
                 logger: logging.Logger) -> None:
        self.name, self.step, self.interval_s, self.what, self.log = name, step, interval_s, what, logger
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        """True once stop() was called (long passes check it to finish early)."""
        return self._stop.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30) -> None:
        """Stop after the current pass (waits for it up to `timeout_s`)."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=timeout_s)

    def wake(self) -> None:
        """Run the next pass now instead of at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.step()
                if failing:
                    self.log.info("%s works again", self.what)
                failing = False
            except Exception as exc:  # noqa: BLE001 - the next pass retries
                if not failing:
                    self.log.warning("%s failed (%s: %s); retrying every %g s", self.what, type(exc).__name__,
                                     str(exc)[:300], self.interval_s)
                failing = True
            self._wake.wait(self.interval_s)
            self._wake.clear()
