"""NodeServer: the running node (DICOM listener, series assembly, services started with it).

The server wires nothing itself: what its AE answers (the DIMSE handlers and SCP contexts) and
which services start with it are given to it. `dicom_node.wiring.build_node(cfg)` is the node
as `srnode serve` runs it (every handler, every service); tests, the pipeline and the demo run it
in-process:

    node = build_node(cfg, stable_hooks=[route_series])
    node.start()            # migrates the index, listens, starts assembly and services
    ...
    node.stop()             # stop listening; in-flight associations get node.shutdown_grace_s

Services started with the node (embedded worker, outbox sender, admin API, ...) are objects with
start()/stop(); pass them as `services=[...]`, or pass functions `make_service(node: NodeServer)
-> Service | None` as `service_factories=[...]` (dicom_node.wiring lists `srnode serve`'s). They
are started after the listener and before series assembly (they install its stable hooks), and
stopped after assembly, before the index is closed, in reverse order.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from config.schema import SRNodeConfig
from dicom_node.ae import build_ae, tls_context
from dicom_node.assembly import Assembler, StableHook
from dicom_node.dimse import pynetdicom_adapter
from dicom_node.group_commit import GroupCommitter
from dicom_node.handlers import NodeContext
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.live_config import LiveConfig
from dicom_node.index.migrate import upgrade
from dicom_node.listener import ChildMain, spawn_listeners, start_listener, stop_listeners
from dicom_node.storage import remove_stale_temp_files
from dicom_node.storage_identity import write_storage_marker

log = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


# What the wiring gives a NodeServer (dicom_node.wiring, dicom_node.scp_wiring):
HandlerFactory = Callable[[NodeContext], list[EventHandlerType]]  # (event, handler[, deps]) entries
ContextFactory = Callable[[], list[PresentationContext]]  # SCP presentation contexts, in the AE's order
ServiceFactory = Callable[["NodeServer"], "Service | None"]  # make_service(node); None: not configured


class NodeServer:
    """One node: index, DICOM listener, assembly loop and extra services, with start()/stop()."""

    def __init__(
        self,
        cfg: SRNodeConfig,
        *,
        handlers: HandlerFactory,
        scp_contexts: ContextFactory,
        stable_hooks: Iterable[StableHook] = (),
        services: Iterable[Service] = (),
        service_factories: Iterable[ServiceFactory] = (),
        listener_child: ChildMain | None = None,
        listener_only: bool = False,
    ) -> None:
        if cfg.node.processes > 1 and not listener_only and listener_child is None:
            raise ValueError("node.processes > 1 needs listener_child (dicom_node.wiring.build_node passes it)")
        self.storage_dir = Path(cfg.node.storage_dir)
        self.engine = make_engine(cfg.node.database_url)
        self.session_factory = session_factory(self.engine)
        # Admin changes (peers, routing, models) are stored in the index; every component gets the
        # live view, so the next association, series or send uses them without a restart.
        self.live = LiveConfig(cfg, self.session_factory)
        self.cfg = cfg = self.live.view()
        # Index writes of parallel receives share commits (C-STORE here, STOW-RS through the admin app).
        self.committer = GroupCommitter(self.session_factory)
        self.context = NodeContext(cfg=cfg, session_factory=self.session_factory, storage_dir=self.storage_dir,
                                   committer=self.committer)
        self._handlers = handlers
        self._scp_contexts = scp_contexts
        self.assembler = Assembler(
            self.session_factory, cfg.series.stable_after_s, cfg.series.check_interval_s,
            hooks=stable_hooks, storage_dir=self.storage_dir,
        )
        self.services: list[Service] = list(services)
        self._service_factories = list(service_factories)
        self._listener_child = listener_child  # entry point of node.processes children (module-level: spawned)
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
        """Migrate the index, start listening, then the services and assembly."""
        pynetdicom_adapter.check_version()  # refuse to start on a pynetdicom the adapter was not tested with
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if not self.listener_only:
            upgrade(self.cfg.node.database_url, self.engine)
            write_storage_marker(self.storage_dir, self.session_factory)  # what workers check: workers/health.py
            # Temp files a crash left mid-write; a walk of the whole archive, so in the background
            # (files this process is writing meanwhile carry its live pid and are kept).
            threading.Thread(target=remove_stale_temp_files, args=(self.storage_dir,), name="srnode-temp-sweep",
                             daemon=True).start()
        handlers = self._handlers(self.context)
        self.ae = build_ae(self.cfg, self._scp_contexts())
        # The service factories' modules (the pipeline pulls in torch, Celery) were imported with
        # the wiring, before listening: an import holds the GIL for seconds, and the first
        # associations would share the CPU with it (measured: 91 instead of 165 instances/s while a
        # fresh node finished importing).
        shared_port = self.cfg.node.processes > 1 or self.listener_only
        self.server = start_listener(self.ae, (self.cfg.node.host, self.cfg.node.port),
                                     tls_context(self.cfg.node.tls), handlers, reuse_port=shared_port)
        self.port = int(self.server.server_address[1])
        if self.listener_only:
            return
        if self.cfg.node.processes > 1:
            assert self._listener_child is not None  # checked in __init__
            self._children = spawn_listeners(self._listener_child, self.cfg.model_dump(mode="json"), self.port,
                                             self.cfg.node.processes - 1)
        log.info("%s listening on %s:%d%s%s", self.cfg.node.ae_title, self.cfg.node.host, self.port,
                 " (TLS)" if self.cfg.node.tls else "",
                 f" in {self.cfg.node.processes} processes" if self.cfg.node.processes > 1 else "")
        for make_service in self._service_factories:
            service = make_service(self)
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
        self.committer.close()
        self.engine.dispose()
        self._stopped.set()

    def wait(self) -> None:
        """Block until stop() has completed."""
        self._stopped.wait()

