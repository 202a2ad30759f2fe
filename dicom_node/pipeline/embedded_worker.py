"""`srnode worker` as a child process of the node (the embedded default: no broker server)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from config.schema import SRNodeConfig

log = logging.getLogger(__name__)


class EmbeddedWorker:
    """`srnode worker` as a child process of the node, with the node's configuration."""

    def __init__(self, cfg: SRNodeConfig, on_restart: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.on_restart = on_restart
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_file = Path(cfg.node.storage_dir).resolve().parent / "srnode-embedded-worker.json"
        self._stopping = False
        # Write end of the child's lifeline pipe. Only this process holds it, so the child reads EOF
        # the moment the node dies, however it dies (kill -9 included) and exits at once instead of
        # finishing its job as an orphan (a supervisor's restart would otherwise run two workers).
        # A pipe rather than PR_SET_PDEATHSIG: that fires when the *thread* that spawned the child
        # exits (the watch thread restarts workers), and a SIGTERM is a warm shutdown that first
        # finishes the chunk being upscaled.
        self._lifeline: int | None = None

    def start(self) -> None:
        """Write the resolved config where the child can read it and start the child."""
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.cfg.model_dump(mode="json")), encoding="utf-8")
        self._stopping = False
        self._spawn()

    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._close_lifeline()
        read_end, self._lifeline = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "--config", str(self.config_file), "--quiet",
                 "--parent-pipe", str(read_end)],
                env=env, pass_fds=(read_end,))
        finally:
            os.close(read_end)
        log.info("embedded worker started (pid %d)", self.proc.pid)

    def check(self) -> None:
        """Restart the child if it died; the caller requeues the jobs it was running."""
        if self._stopping or self.proc is None or self.proc.poll() is None:
            return
        log.warning("embedded worker exited with %s; restarting it", self.proc.returncode)
        if self.on_restart:
            self.on_restart()
        self._spawn()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if the current slice takes too long."""
        self._stopping = True
        if self.proc is None or self.proc.poll() is not None:
            self._close_lifeline()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_lifeline()

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
