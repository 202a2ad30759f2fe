"""The DICOM listener socket, optionally shared by several node processes (SO_REUSEPORT).

With node.processes = N > 1 the node's main process and N-1 listener-only child processes each
bind node.port with SO_REUSEPORT; the kernel spreads incoming associations over them, so parallel
associations use several cores instead of one GIL. Children run only the listener (handlers write
and index exactly as in the main process); assembly and services run once, in the main process.
"""
from __future__ import annotations

import logging
import multiprocessing
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.dimse import pynetdicom_adapter

log = logging.getLogger(__name__)

# A listener child's entry point: (configuration as JSON data, port, event to set once listening).
# The wiring passes it (dicom_node.scp_wiring.run_listener_child): this module knows processes, not the node.
ChildMain = Callable[[dict[str, Any], int, Any], None]


class ReusePortServer(ThreadedAssociationServer):
    """A threaded association server whose socket may share its port with sibling processes."""

    def server_bind(self) -> None:
        assert self.socket is not None  # created by the server's __init__ before binding
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_listener(ae: AE, address: tuple[str, int], ssl_context: Any, handlers: list[Any],
                   reuse_port: bool) -> ThreadedAssociationServer:
    """Start a non-blocking association server (as AE.start_server does, optionally reuse-port)."""
    if not reuse_port:
        server = ae.start_server(address, block=False, ssl_context=ssl_context, evt_handlers=handlers)
        return cast(ThreadedAssociationServer, server)  # block=False always returns the server
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=handlers, server_class=ReusePortServer)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    pynetdicom_adapter.register_server(ae, server)  # as start_server does: AE.shutdown() stops it
    return server


def spawn_listeners(child_main: ChildMain, cfg_data: dict[str, Any], port: int, count: int,
                    timeout: float = 120) -> list[Any]:
    """Start `count` processes running `child_main` on `port` (spawned: it must be a module-level
    function); return them once all are listening."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(count):
        ready = ctx.Event()
        proc = ctx.Process(target=child_main, args=(cfg_data, port, ready), name=f"srnode-listener-{i + 1}",
                           daemon=False)
        proc.start()
        procs.append((proc, ready))
    for proc, ready in procs:
        if not ready.wait(timeout):
            raise RuntimeError(f"{proc.name} did not start listening within {timeout:.0f} s")
    return [p for p, _ in procs]


def stop_listeners(procs: list[Any], grace_s: float) -> None:
    """SIGTERM the children (each drains its own associations) and wait for them."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(grace_s + 10)
        if proc.is_alive():
            log.warning("%s still running after the grace period; killing it", proc.name)
            proc.kill()
            proc.join(5)
