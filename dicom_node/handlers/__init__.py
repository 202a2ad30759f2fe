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


@dataclass
class NodeContext:
    """What handlers need from the running node (read-only for them)."""

    cfg: SRNodeConfig
    session_factory: sessionmaker[Session]
    storage_dir: Path
    extras: dict[str, Any] = field(default_factory=dict)  # for handler modules' own state
