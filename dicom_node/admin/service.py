"""Run the admin API + console with uvicorn in a thread beside the DICOM listener.

`srnode serve` starts it through `dicom_node.wiring.SERVICES` (`make_service(node)`);
tests and the demo can use `AdminService(app, host, port)` directly. Port 0 picks a free port
(read `.port` after start()).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("srnode.admin")


class AdminService:
    """uvicorn serving `app` on (host, port) in a daemon thread, with start()/stop()."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the socket (so the port is known and errors surface here), then serve in a thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
        # says TCP, and without it every request after the first on a keep-alive connection waited
        # ~40 ms for a delayed ACK (uvicorn writes a response's headers and body separately).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"admin API cannot listen on {self.host}:{self.port} "
                          f"(admin.host/admin.port): {exc.strerror}") from None
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="srnode-admin", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise RuntimeError(f"admin API did not start on {self.host}:{self.port}")
        log.info("admin API and console on http://%s:%d/", self.host, self.port)

    def stop(self) -> None:
        """Ask uvicorn to finish and wait for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None


def make_service(node: Any) -> AdminService | None:
    """The admin service for a NodeServer (None when admin.enabled is false or no token is set).

    Retried jobs need no call into the pipeline: a queued Job row without a task id is what the
    pipeline's Dispatcher polls for and sends to the workers.
    """
    from dicom_node import metrics
    from dicom_node.admin.app import create_app
    from dicom_node.index.live_config import LiveConfig

    cfg = node.cfg
    if not cfg.admin.enabled:
        return None
    if not cfg.admin.tokens:
        # Nobody could sign in; and nodes started by tests must not all fight for port 8080.
        log.info("admin API not started: admin.tokens is empty")
        return None
    live = getattr(node, "live", None) or LiveConfig(cfg, node.session_factory)
    metrics.SNAPSHOT.active_associations = node.active_associations
    app = create_app(live, node.session_factory, on_demand=node.context.on_demand, committer=node.context.committer)
    return AdminService(app, cfg.admin.host, cfg.admin.port)
