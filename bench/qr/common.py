"""Helpers shared by the Q/R benchmarks: ports, a node with chosen peers, the reference's environment."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from config.loader import parse_config
from dicom_node.server import NodeServer
from dicom_node.wiring import build_node

# DCMTK (3.6.2+) and Orthanc read TCP_NODELAY from the environment; the brief asks for it on.
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    """Block until something listens on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def start_node(workdir: Path, peers: dict[str, tuple[str, int]], max_results: int = 0) -> NodeServer:
    """A started srnode (SQLite index in `workdir`) with the given peers {key: (AE title, port)}."""
    cfg = parse_config({
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": free_port(),
                 "storage_dir": str(workdir / "storage"),
                 "database_url": f"sqlite:///{workdir / 'index.db'}", "min_free_disk_mb": 0},
        "peers": {k: {"ae_title": ae, "host": "127.0.0.1", "port": port} for k, (ae, port) in peers.items()},
        "series": {"stable_after_s": 86400},
        "admin": {"enabled": False},
        "query_retrieve": {"max_results": max_results},
    })
    node = build_node(cfg, services=[])
    node.start()
    return node
