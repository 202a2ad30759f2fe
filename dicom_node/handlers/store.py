"""C-STORE: write the dataset as sent, index it, then answer (thin: logic is in dicom_node.ingest)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.handlers import NodeContext
from dicom_node.handlers.association import free_disk_mb, quota_refusal
from dicom_node.ingest import RejectedInstance, SOPClassMismatch, store_encoded
from dicom_node.storage import uid_for_log

log = logging.getLogger("dicom_node.store")

OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110


def handle_store(event: evt.Event, ctx: NodeContext) -> int:
    """Store one instance; any failure becomes a failure status and one log line, never a crash."""
    calling = str(event.assoc.requestor.ae_title).strip()
    sop_uid = str(event.request.AffectedSOPInstanceUID or "")[:64]
    shown = uid_for_log(sop_uid)  # the request's UID is peer data too: quoted only if digits and dots
    try:
        if free_disk_mb(ctx) < ctx.cfg.node.min_free_disk_mb:
            log.warning("refused instance %s from %r: storage below node.min_free_disk_mb", shown, calling)
            return OUT_OF_RESOURCES
        full = quota_refusal(ctx)
        if full:
            log.warning("refused instance %s from %r: %s", shown, calling, full)
            return OUT_OF_RESOURCES
        context_class = str(event.context.abstract_syntax)
        # pynetdicom dispatches on the context and checks neither the request's class nor the dataset's.
        if str(event.request.AffectedSOPClassUID or "").rstrip("\x00 ") != context_class:
            raise SOPClassMismatch("the request's Affected SOP Class UID is not the presentation context's")
        data = event.encoded_dataset(include_meta=True)
        result = store_encoded(
            ctx.session_factory, ctx.storage_dir, data, calling, expected_sop_instance_uid=sop_uid,
            expected_sop_class_uid=context_class,
        )
    except RejectedInstance as exc:
        log.warning("refused instance %s from %r: %s", shown, calling, exc)
        return exc.status
    except OSError as exc:
        log.error("could not store instance %s from %r: %s", shown, calling, exc.strerror or type(exc).__name__)
        return OUT_OF_RESOURCES
    except Exception as exc:  # noqa: BLE001 - the node answers a status, it never dies on one instance
        # The exception text is left out: it may quote received values.
        log.error("could not store instance %s from %r: %s", shown, calling, type(exc).__name__)
        return PROCESSING_FAILURE
    if result.duplicate:
        log.info("instance %s from %r replaced an earlier copy (duplicate policy: last write wins)", shown, calling)
    return 0x0000


def bind(ctx: NodeContext) -> list[tuple[Any, Callable[..., Any]]]:
    """The C-STORE handler."""
    return [(evt.EVT_C_STORE, handle_store, [ctx])]


def scp_contexts() -> list[PresentationContext]:
    """Every storage SOP class, in every transfer syntax pydicom knows (stored as sent, not decoded)."""
    syntaxes = list(AllTransferSyntaxes)
    return [build_context(cx.abstract_syntax, syntaxes) for cx in AllStoragePresentationContexts]
