"""C-STORE: write the dataset as sent, index it, then answer (thin: logic is in dicom_node.ingest)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.handlers import NodeContext
from dicom_node.handlers.association import free_disk_mb, quota_refusal
from dicom_node.ingest import (
    RejectedInstance,
    SOPClassMismatch,
    StoreResult,
    store_encoded,
)
from dicom_node.storage import uid_for_log

log = logging.getLogger("dicom_node.store")

OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110


def handle_store(event: evt.Event, ctx: NodeContext) -> int:
    """Store one instance; any failure becomes a failure status and one log line, never a crash."""
    calling = str(event.assoc.requestor.ae_title).strip()
    sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")[:64]
    context_class = str(event.context.abstract_syntax)

    def load() -> bytes:
        # pynetdicom dispatches on the context and checks neither the request's class nor the dataset's.
        if str(event.request.AffectedSOPClassUID or "").rstrip("\x00 ") != context_class:
            raise SOPClassMismatch("the request's Affected SOP Class UID is not the presentation context's")
        return event.encoded_dataset(include_meta=True)

    # The request's UID is peer data too: uid_for_log quotes it only if it is digits and dots.
    status, _ = store_received(ctx, load, calling, repr(calling), uid_for_log(sop_uid),
                               expected_sop_instance_uid=sop_uid, expected_sop_class_uid=context_class)
    return status


def store_received(ctx: NodeContext, load: Callable[[], bytes], sender_ae: str, who: str,
                   shown: str | Callable[[], str], *,
                   expected_sop_instance_uid: str | None = None,
                   expected_sop_class_uid: str | None = None) -> tuple[int, StoreResult | None]:
    """The receive policy of one instance, for C-STORE and STOW-RS alike: free disk and quota checks,
    `load()` (the bytes; may raise RejectedInstance), validate, store and index; (status, result).

    `sender_ae` is recorded in the index (routing's calling_ae); `who` and `shown` (the instance's
    UID as uid_for_log quotes it, or a function giving it: called only for a log line, since STOW-RS
    must decode the part to know it) name the sender and instance in the one log line of a refusal.
    """
    def name() -> str:
        return shown() if callable(shown) else shown

    try:
        if free_disk_mb(ctx) < ctx.cfg.node.min_free_disk_mb:
            log.warning("refused instance %s from %s: storage below node.min_free_disk_mb", name(), who)
            return OUT_OF_RESOURCES, None
        full = quota_refusal(ctx)
        if full:
            log.warning("refused instance %s from %s: %s", name(), who, full)
            return OUT_OF_RESOURCES, None
        result = store_encoded(
            ctx.session_factory, ctx.storage_dir, load(), sender_ae,
            expected_sop_instance_uid=expected_sop_instance_uid, expected_sop_class_uid=expected_sop_class_uid,
            committer=ctx.committer,
        )
    except RejectedInstance as exc:
        log.warning("refused instance %s from %s: %s", name(), who, exc)
        return exc.status, None
    except OSError as exc:
        log.error("could not store instance %s from %s: %s", name(), who, exc.strerror or type(exc).__name__)
        return OUT_OF_RESOURCES, None
    except Exception as exc:  # noqa: BLE001 - the node answers a status, it never dies on one instance
        # The exception text is left out: it may quote received values.
        log.error("could not store instance %s from %s: %s", name(), who, type(exc).__name__)
        return PROCESSING_FAILURE, None
    if result.duplicate:
        log.info("instance %s from %s replaced an earlier copy (duplicate policy: last write wins)", name(), who)
    return 0x0000, result


def scp_contexts() -> list[PresentationContext]:
    """Every storage SOP class, in every transfer syntax pydicom knows (stored as sent, not decoded)."""
    syntaxes: list[str | UID] = list(AllTransferSyntaxes)
    return [build_context(cast(str, cx.abstract_syntax), syntaxes) for cx in AllStoragePresentationContexts]
