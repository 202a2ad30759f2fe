"""The node's DIMSE handlers (association checks, C-ECHO, C-STORE) and what they get: NodeContext.

Handlers stay thin: validate, call the owning module, map its outcome to a DIMSE status. A
handler that needs the node takes a `ctx: NodeContext` argument, bound as pynetdicom's handler
arguments (`(evt.EVT_C_STORE, handle_store, [ctx])`). Which handlers and SCP presentation contexts
the node's AE has is listed in one place, dicom_node.scp_wiring (Q/R's handlers live in
dicom_node.qr.handlers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.group_commit import GroupCommitter
from dicom_node.qr.on_demand import OnDemandSlot
from dicom_node.retention.usage import QuotaCheck


@dataclass
class NodeContext:
    """What handlers need from the running node (read-only for them)."""

    cfg: SRNodeConfig
    session_factory: sessionmaker[Session]
    storage_dir: Path
    # The node's on-demand provider (NodeServer creates it, the pipeline service installs into it;
    # Q/R and the DICOMweb app ask it): dicom_node.qr.on_demand.
    on_demand: OnDemandSlot = field(default_factory=OnDemandSlot)
    # The node's group committer for `session_factory` (NodeServer owns and closes it); None: each
    # received instance commits alone (dicom_node.group_commit).
    committer: GroupCommitter | None = None
    # The running Q/R service (dicom_node.qr.handlers.QRService), set by dicom_node.scp_wiring;
    # typed loosely because Q/R sits beside the handlers, not below them.
    qr: Any = None
    # The storage quota check (retention.quota_mb), cached per node process and shared by the
    # association, C-STORE and STOW-RS checks.
    quota: QuotaCheck = field(init=False)

    def __post_init__(self) -> None:
        self.quota = QuotaCheck(self.session_factory, lambda: self.cfg.retention)
