"""The node's wiring (dicom_node.wiring, dicom_node.scp_wiring) lists every handler, context and service."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import CTImageStorage
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from config.loader import parse_config
from dicom_node.ae import set_tcp_nodelay
from dicom_node.handlers import association, echo, store
from dicom_node.server import NodeServer
from tests.dicom_node.conftest import node_config


def _bound(node: NodeServer, event: evt.EventType) -> list[Any]:
    """The handler functions the listener has for `event` (notification or intervention event)."""
    assert node.server is not None
    got = node.server.get_handlers(event)
    pairs = got if isinstance(got, list) else [got]
    return [handler for handler, _args in pairs if handler is not None]


def test_node_ae_has_every_handler_and_context(tmp_path: Path, sqlite_url: str,
                                               start_node: Callable[..., NodeServer]) -> None:
    node = start_node(node_config(tmp_path, sqlite_url))  # listener side only: services=[]
    assert _bound(node, evt.EVT_REQUESTED) == [association.handle_requested]
    assert _bound(node, evt.EVT_C_ECHO) == [echo.handle_echo]
    assert _bound(node, evt.EVT_C_STORE) == [store.handle_store]
    qr = node.context.qr
    assert qr.provider is node.context.on_demand  # Q/R asks the node's on-demand slot
    assert node.context.committer is node.committer  # C-STOREs share the node's group commits
    for event, method in ((evt.EVT_C_FIND, qr.on_find), (evt.EVT_C_MOVE, qr.on_move), (evt.EVT_C_GET, qr.on_get)):
        assert _bound(node, event) == [method]
    assert set_tcp_nodelay in _bound(node, evt.EVT_CONN_OPEN)

    contexts = {cx.abstract_syntax: cx for cx in node.ae.supported_contexts}
    for uid in (Verification, PatientRootQueryRetrieveInformationModelFind,
                StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet):
        assert uid in contexts
    ct = contexts[CTImageStorage]  # Q/R's storage context came first: the SCU role is accepted (C-GET)
    assert ct.scu_role and ct.scp_role


def test_build_node_starts_the_four_services_in_order(tmp_path: Path) -> None:
    from dicom_node import housekeeping, pipeline
    from dicom_node.admin import service as admin_service
    from dicom_node.retention import service as retention_service
    from dicom_node.wiring import SERVICES, build_node

    assert SERVICES == [pipeline.make_service, admin_service.make_service, retention_service.make_service,
                        housekeeping.make_service]
    cfg = parse_config({
        "node": {"host": "127.0.0.1", "port": 0, "storage_dir": str(tmp_path / "storage"),
                 "database_url": f"sqlite:///{tmp_path / 'index.db'}", "shutdown_grace_s": 1},
        "worker": {"embedded": False},  # no worker process: the pipeline service still starts
        "admin": {"host": "127.0.0.1", "port": 0, "tokens": {"wiring-admin-token-0123456789": "admin"}},
    }, environ={})
    node = build_node(cfg)  # what `srnode serve` runs
    node.start()
    try:
        assert [type(s).__name__ for s in node.services] == [
            "PipelineService", "AdminService", "RetentionService", "HousekeepingService"]
        assert _bound(node, evt.EVT_C_STORE) == [store.handle_store]
    finally:
        node.stop(0)


def test_services_start_in_the_given_order_and_stop_in_reverse(tmp_path: Path, sqlite_url: str,
                                                               start_node: Callable[..., NodeServer]) -> None:
    calls: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def start(self) -> None:
            calls.append(f"start {self.name}")

        def stop(self) -> None:
            calls.append(f"stop {self.name}")

    def first(node: NodeServer) -> Recorder:
        return Recorder("first")

    def not_configured(node: NodeServer) -> None:
        return None

    def second(node: NodeServer) -> Recorder:
        return Recorder("second")

    node = start_node(node_config(tmp_path, sqlite_url), services=[first, not_configured, second])
    assert calls == ["start first", "start second"]
    node.stop(0)
    assert calls == ["start first", "start second", "stop second", "stop first"]
