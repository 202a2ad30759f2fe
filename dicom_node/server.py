"""NodeServer: the running node (DICOM listener, series assembly, services started with it).

Composable: tests, the pipeline and the demo run it in-process:

    node = NodeServer(cfg, stable_hooks=[route_series])
    node.start()            # migrates the index, listens, starts assembly and services
    ...
    node.stop()             # stop listening; in-flight associations get node.shutdown_grace_s

Services started with the node (embedded worker, outbox sender, admin API, ...) are objects with
start()/stop(); pass them as `services=[...]`, or list a module in SERVICE_MODULES that defines
`make_service(node: NodeServer) -> Service | None` (one line, like cli.COMMAND_MODULES). They are
started after the listener and before series assembly (they install its stable hooks), and stopped
after assembly, before the index is closed, in reverse order.
"""
from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from pynetdicom.transport import ThreadedAssociationServer

from config.loader import parse_config
from config.schema import SRNodeConfig
from dicom_node.ae import build_ae, tls_context
from dicom_node.assembly import Assembler, StableHook
from dicom_node.dimse import pynetdicom_adapter
from dicom_node.group_commit import close_committer
from dicom_node.handlers import NodeContext, collect
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.live_config import LiveConfig
from dicom_node.index.migrate import upgrade
from dicom_node.listener import spawn_listeners, start_listener, stop_listeners
from dicom_node.storage import remove_stale_temp_files
from dicom_node.storage_identity import write_storage_marker

log = logging.getLogger(__name__)

# Modules defining make_service(node) -> Service | None, started with `srnode serve`.
SERVICE_MODULES: list[str] = [
    "dicom_node.pipeline",  # routing hook, job dispatch, outbox sender, embedded worker
    "dicom_node.admin.service",  # admin API, console, /metrics, probes (only when admin.tokens is set)
    "dicom_node.retention.service",  # quota and age recycling, finishes an interrupted recycle on start
    "dicom_node.housekeeping",  # prunes old outbox/job/audit/worker rows, SQLite WAL and VACUUM, temp files
]


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class NodeServer:
    """One node: index, DICOM listener, assembly loop and extra services, with start()/stop()."""

    def __init__(
        self,
        cfg: SRNodeConfig,
        stable_hooks: Iterable[StableHook] = (),
        services: Iterable[Service] = (),
        handler_modules: Iterable[str] | None = None,
        service_modules: Iterable[str] | None = None,
        listener_only: bool = False,
    ) -> None:
        self.storage_dir = Path(cfg.node.storage_dir)
        self.engine = make_engine(cfg.node.database_url)
        self.session_factory = session_factory(self.engine)
        # Admin changes (peers, routing, models) are stored in the index; every component gets the
        # live view, so the next association, series or send uses them without a restart.
        self.live = LiveConfig(cfg, self.session_factory)
        self.cfg = cfg = self.live.view()
        self.context = NodeContext(cfg=cfg, session_factory=self.session_factory, storage_dir=self.storage_dir)
        self.handler_modules = None if handler_modules is None else list(handler_modules)
        self.assembler = Assembler(
            self.session_factory, cfg.series.stable_after_s, cfg.series.check_interval_s,
            hooks=stable_hooks, storage_dir=self.storage_dir,
        )
        self.services: list[Service] = list(services)
        self._service_modules = SERVICE_MODULES if service_modules is None else list(service_modules)
        self.ae: Any = None
        self.server: ThreadedAssociationServer | None = None
        self.port: int | None = None
        self.listener_only = listener_only  # a node.processes child: no migrations, assembly or services
        self._children: list[Any] = []
        self._started: list[Service] = []
        self._stopped = threading.Event()
        self._accept_lock = threading.Lock()
        self._closed_server: Any = None
        self._in_flight: list[Any] = []

    def start(self) -> None:
        """Migrate the index, import the services, start listening, then services and assembly."""
        pynetdicom_adapter.check_version()  # refuse to start on a pynetdicom the adapter was not tested with
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if not self.listener_only:
            upgrade(self.cfg.node.database_url, self.engine)
            write_storage_marker(self.storage_dir, self.session_factory)  # what workers check: workers/health.py
            # Temp files a crash left mid-write; a walk of the whole archive, so in the background
            # (files this process is writing meanwhile carry its live pid and are kept).
            threading.Thread(target=remove_stale_temp_files, args=(self.storage_dir,), name="srnode-temp-sweep",
                             daemon=True).start()
        handlers, contexts = collect(self.context, self.handler_modules)
        self.ae = build_ae(self.cfg, contexts)
        # Import the services (the pipeline pulls in torch, Celery) before listening: an import
        # holds the GIL for seconds, and the first associations would share the CPU with it
        # (measured: 91 instead of 165 instances/s while a fresh node finished importing).
        service_modules = [] if self.listener_only else [importlib.import_module(n) for n in self._service_modules]
        shared_port = self.cfg.node.processes > 1 or self.listener_only
        self.server = start_listener(self.ae, (self.cfg.node.host, self.cfg.node.port),
                                     tls_context(self.cfg.node.tls), handlers, reuse_port=shared_port)
        self.port = int(self.server.server_address[1])
        if self.listener_only:
            return
        if self.cfg.node.processes > 1:
            self._children = spawn_listeners(run_listener_child, self.cfg.model_dump(mode="json"), self.port,
                                             self.cfg.node.processes - 1)
        log.info("%s listening on %s:%d%s%s", self.cfg.node.ae_title, self.cfg.node.host, self.port,
                 " (TLS)" if self.cfg.node.tls else "",
                 f" in {self.cfg.node.processes} processes" if self.cfg.node.processes > 1 else "")
        for module in service_modules:
            service = module.make_service(self)
            if service is not None:
                self.services.append(service)
        for service in self.services:
            service.start()
            self._started.append(service)
        # Last: services install the stable hooks (routing). Assembly started before them would hand
        # the series that became stable while the node was down to no hook at all.
        self.assembler.start()

    def active_associations(self) -> int:
        """Associations currently open on the listener."""
        return len(self.server.active_associations) if self.server else 0

    def stop_accepting(self) -> None:
        """Close the listening socket(s) now; open associations keep running (stop() drains them).

        Idempotent; safe to call from a signal handler's helper thread while start() runs.
        """
        with self._accept_lock:
            if self.server is None or self._closed_server is not None:
                return
            self._closed_server = self.server
            self._in_flight = list(self.server.active_associations)
            self.server.shutdown()  # closes the listening socket; open associations keep running
            for child in self._children:
                child.terminate()  # each child closes its socket and drains its own associations

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish (up to the grace), stop everything."""
        grace = self.cfg.node.shutdown_grace_s if grace_s is None else grace_s
        self.stop_accepting()
        children, self._children = self._children, []
        if self.server is not None:
            self.server = None
            in_flight = self._in_flight
            deadline = time.monotonic() + grace
            while any(a.is_alive() for a in in_flight) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = [a for a in in_flight if a.is_alive()]
            if left:
                log.warning("aborting %d association(s) still open after %.0f s grace", len(left), grace)
                for assoc in left:
                    assoc.abort()
        stop_listeners(children, grace)
        self.assembler.stop()  # no hand-off into services that are stopping
        for service in reversed(self._started):
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %r failed", service)
        self._started.clear()
        close_committer(self.session_factory)
        self.engine.dispose()
        self._stopped.set()

    def wait(self) -> None:
        """Block until stop() has completed."""
        self._stopped.wait()


def run_listener_child(cfg_data: dict[str, Any], port: int, ready: Any) -> None:
    """Entry point of a listener-only child process (spawned by listener.spawn_listeners)."""
    cfg = parse_config(cfg_data, environ={})
    cfg.node.port = port
    logging.basicConfig(level=cfg.node.log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    node = NodeServer(cfg, listener_only=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children stop
    node.start()
    ready.set()
    stop.wait()
    node.stop()
