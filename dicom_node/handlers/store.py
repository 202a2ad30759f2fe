"""C-STORE: write the dataset as sent, index it, then answer (thin: logic is in dicom_node.ingest)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.handlers import NodeContext
from dicom_node.handlers.association import free_disk_mb
from dicom_node.ingest import RejectedInstance, store_encoded

log = logging.getLogger("dicom_node.store")

OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110


def handle_store(event: evt.Event, ctx: NodeContext) -> int:
    """Store one instance; any failure becomes a failure status and one log line, never a crash."""
    calling = str(event.assoc.requestor.ae_title).strip()
    sop_uid = str(event.request.AffectedSOPInstanceUID or "")[:64]
    try:
        if free_disk_mb(ctx) < ctx.cfg.node.min_free_disk_mb:
            log.warning("refused instance %s from %r: storage below node.min_free_disk_mb", sop_uid, calling)
            return OUT_OF_RESOURCES
        data = event.encoded_dataset(include_meta=True)
        result = store_encoded(
            ctx.session_factory, ctx.storage_dir, data, calling, expected_sop_instance_uid=sop_uid
        )
    except RejectedInstance as exc:
        log.warning("refused instance %r from %r: %s", sop_uid, calling, exc)
        return exc.status
    except OSError as exc:
        log.error("could not store instance %s from %r: %s", sop_uid, calling, exc.strerror or exc)
        return OUT_OF_RESOURCES
    except Exception as exc:  # noqa: BLE001 - the node answers a status, it never dies on one instance
        log.error("could not store instance %r from %r: %s: %s", sop_uid, calling, type(exc).__name__, str(exc)[:200])
        return PROCESSING_FAILURE
    if result.duplicate:
        log.info("instance %s from %r replaced an earlier copy (duplicate policy: last write wins)", sop_uid, calling)
    return 0x0000


def bind(ctx: NodeContext) -> list[tuple[Any, Callable[..., Any]]]:
    """The C-STORE handler."""
    return [(evt.EVT_C_STORE, handle_store, [ctx])]


def scp_contexts() -> list[PresentationContext]:
    """Every storage SOP class, in every transfer syntax pydicom knows (stored as sent, not decoded)."""
    syntaxes = list(AllTransferSyntaxes)
    return [build_context(cx.abstract_syntax, syntaxes) for cx in AllStoragePresentationContexts]
