"""The node process, wired in plain sight: its AE (dicom_node.scp_wiring) and its services.

`build_node(cfg)` is the node `srnode serve` runs: every DIMSE handler and SCP context, and the
services below, started in this order after the listener (stopped in reverse). A caller that
wants fewer passes the factories themselves:

    node = build_node(cfg, services=[admin_service.make_service])   # the admin API only
    node = build_node(cfg, services=[])                              # the listener side only

A service is a function `make_service(node: NodeServer) -> Service | None` (None: not configured)
in its owning module; to add one, import it here and list it in SERVICES. Importing this module
imports every service's module (the pipeline pulls in torch and Celery): that happens before the
node listens, as it must (an import holds the GIL for seconds, and the first associations would
share the CPU with it). Nothing inside dicom_node imports this module except the commands that run
a node (dicom_node.commands `serve`, dicom_node.demo_run).
"""
from __future__ import annotations

from collections.abc import Iterable

from config.schema import SRNodeConfig
from dicom_node import housekeeping, pipeline, scp_wiring
from dicom_node.admin import service as admin_service
from dicom_node.assembly import StableHook
from dicom_node.retention import service as retention_service
from dicom_node.server import NodeServer, ServiceFactory

# Started with `srnode serve`, in this order.
SERVICES: list[ServiceFactory] = [
    pipeline.make_service,  # routing hook, job dispatch, outbox sender, embedded worker
    admin_service.make_service,  # admin API, console, /metrics, probes (only when admin.tokens is set)
    retention_service.make_service,  # quota and age recycling, finishes an interrupted recycle on start
    housekeeping.make_service,  # prunes old outbox/job/audit/worker rows, SQLite WAL and VACUUM, temp files
]


def build_node(
    cfg: SRNodeConfig,
    *,
    services: Iterable[ServiceFactory] = SERVICES,
    stable_hooks: Iterable[StableHook] = (),
) -> NodeServer:
    """The node as `srnode serve` runs it (not started): scp_wiring's AE, `services` started with it."""
    return NodeServer(
        cfg,
        handlers=scp_wiring.handlers,
        scp_contexts=scp_wiring.scp_contexts,
        listener_child=scp_wiring.run_listener_child,
        stable_hooks=stable_hooks,
        service_factories=services,
    )
