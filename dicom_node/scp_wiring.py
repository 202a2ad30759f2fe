"""The node's AE, wired in plain sight: every DIMSE handler and every SCP presentation context.

Listed as pynetdicom's apps/qrscp lists them: `(evt.EVT_..., handler, [deps])`, bound on the
listener in this order. Handlers stay thin (validate, call the owning module, map its outcome to a
DIMSE status) and live with their owners: dicom_node.handlers (association checks, C-ECHO,
C-STORE) and dicom_node.qr.handlers (C-FIND/C-MOVE/C-GET). To serve a new DIMSE service, import
its handler module here and add its entries and contexts.

This module is the whole of what a listener-only child process (`node.processes` > 1) imports
of the node: `run_listener_child` is its entry point. The node process itself is wired by
dicom_node.wiring (this AE plus the services); keep the services out of here, the pipeline imports
torch.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext

from config.loader import parse_config
from config.schema import SRNodeConfig
from dicom_node.ae import set_tcp_nodelay
from dicom_node.handlers import NodeContext, association, echo, store
from dicom_node.qr import handlers as qr
from dicom_node.server import NodeServer


def handlers(ctx: NodeContext) -> list[EventHandlerType]:
    """The (event, handler[, deps]) entries the node's AE binds on its listener."""
    qr_service = qr.QRService(ctx.cfg, ctx.session_factory, ctx.storage_dir, provider=ctx.on_demand)
    ctx.qr = qr_service  # the running Q/R service, reachable through the node's context
    # Module attributes looked up here, on each call: a profiler may wrap them (bench/store/profile_store.py).
    return [
        (evt.EVT_REQUESTED, association.handle_requested, [ctx]),  # calling-AE, free-disk and quota checks
        (evt.EVT_C_ECHO, echo.handle_echo),
        (evt.EVT_C_FIND, qr_service.on_find),
        (evt.EVT_C_MOVE, qr_service.on_move),
        (evt.EVT_C_GET, qr_service.on_get),
        (evt.EVT_CONN_OPEN, set_tcp_nodelay),  # C-MOVE/C-GET sub-operations: no Nagle delay
        (evt.EVT_C_STORE, store.handle_store, [ctx]),
    ]


def scp_contexts() -> list[PresentationContext]:
    """The SCP presentation contexts, in order: the AE keeps the first context per SOP class, so
    Q/R's storage contexts (SCU role accepted, for C-GET) come before the plain storage ones."""
    storage = store.scp_contexts()
    return [*echo.scp_contexts(), *qr.scp_contexts(storage), *storage]


def listener_node(cfg: SRNodeConfig) -> NodeServer:
    """A listener-only NodeServer: this AE, no migrations, assembly or services."""
    return NodeServer(cfg, handlers=handlers, scp_contexts=scp_contexts, listener_only=True)


def run_listener_child(cfg_data: dict[str, Any], port: int, ready: Any) -> None:
    """Entry point of a listener-only child process (spawned by listener.spawn_listeners)."""
    cfg = parse_config(cfg_data, environ={})
    cfg.node.port = port
    logging.basicConfig(level=cfg.node.log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    node = listener_node(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children stop
    node.start()
    ready.set()
    stop.wait()
    node.stop()
