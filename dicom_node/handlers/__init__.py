"""The DIMSE handler registry: which (event, handler) pairs and SCP contexts the node's AE has.

Each module named in HANDLER_MODULES defines two functions:

    def bind(ctx: NodeContext) -> list[tuple[pynetdicom.evt.EventType, Callable]]
        # (event, handler) pairs; handlers get `ctx` through a closure or functools.partial
    def scp_contexts() -> list[pynetdicom.presentation.PresentationContext]
        # presentation contexts this module serves as SCP (may be empty)

To add a service (e.g. Query/Retrieve's C-FIND/C-MOVE/C-GET), write such a module and add its
dotted name to HANDLER_MODULES (one line, like cli.COMMAND_MODULES), or pass
`handler_modules=[...]` to `dicom_node.server.NodeServer` for a one-off. Handlers stay thin:
validate, call the owning module, map its outcome to a DIMSE status.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom.events import EventHandlerType
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig

HANDLER_MODULES: list[str] = [
    "dicom_node.handlers.association",  # calling-AE and free-disk checks on A-ASSOCIATE-RQ
    "dicom_node.handlers.echo",  # C-ECHO
    "dicom_node.qr.handlers",  # C-FIND/C-MOVE/C-GET; before store: its storage contexts allow the C-GET role
    "dicom_node.handlers.store",  # C-STORE, all storage SOP classes
]


@dataclass
class NodeContext:
    """What handlers need from the running node (read-only for them)."""

    cfg: SRNodeConfig
    session_factory: sessionmaker[Session]
    storage_dir: Path
    extras: dict[str, Any] = field(default_factory=dict)  # for handler modules' own state


def collect(ctx: NodeContext,
            modules: Iterable[str] | None = None) -> tuple[list[EventHandlerType], list[Any]]:
    """Import every handler module; return all (event, handler) pairs and all SCP contexts."""
    handlers: list[EventHandlerType] = []
    contexts: list[Any] = []
    for name in HANDLER_MODULES if modules is None else modules:
        module = importlib.import_module(name)
        handlers.extend(module.bind(ctx))
        contexts.extend(module.scp_contexts())
    return handlers, contexts
