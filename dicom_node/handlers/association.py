"""A-ASSOCIATE-RQ checks: another called AE title, an unknown calling AE title, a nearly full disk and a
storage quota (retention.quota_mb) exceeded with nothing left to recycle are refused."""
from __future__ import annotations

import logging
import shutil

from pynetdicom import evt

from dicom_node.handlers import NodeContext
from dicom_node.metrics import ASSOCIATIONS

log = logging.getLogger("dicom_node.association")


def free_disk_mb(ctx: NodeContext) -> float:
    """Free space (MiB) on the filesystem holding the storage directory."""
    ctx.storage_dir.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(ctx.storage_dir).free / (1024 * 1024)


def quota_refusal(ctx: NodeContext) -> str:
    """"" or why storage is full by retention.quota_mb (above it with nothing left to recycle)."""
    return ctx.quota.refusal()


def _reject(event: evt.Event, result: int, source: int, diagnostic: int) -> None:
    # As pynetdicom's own rejections: send A-ASSOCIATE-RJ, then let the DUL flush and stop.
    event.assoc.acse.send_reject(result, source, diagnostic)
    event.assoc.kill()


def _wrong_called_ae(event: evt.Event, ctx: NodeContext, calling: str) -> bool:
    """Reject (one log line) an association addressed to another AE title than the node's."""
    primitive = event.assoc.requestor.primitive
    assert primitive is not None  # the A-ASSOCIATE-RQ being handled
    called = str(primitive.called_ae_title).strip()
    node = ctx.cfg.node
    if not node.require_called_ae or called == node.ae_title:
        return False
    log.warning("rejected association from %r (%s): called AE %r is not node.ae_title %r",
                calling, event.assoc.requestor.address, called, node.ae_title)
    # permanent, service user, called AE title not recognised (as Orthanc's DicomCheckCalledAet)
    _reject(event, 0x01, 0x01, 0x07)
    ASSOCIATIONS.labels(outcome="rejected_called_ae").inc()
    return True


def handle_requested(event: evt.Event, ctx: NodeContext) -> None:
    """Reject the association (one log line) if it is addressed to another AE title, the caller
    is unknown, the disk is too full or the quota is exceeded with nothing eligible to recycle."""
    primitive = event.assoc.requestor.primitive
    assert primitive is not None  # the A-ASSOCIATE-RQ being handled
    calling = str(primitive.calling_ae_title).strip()
    node = ctx.cfg.node
    if _wrong_called_ae(event, ctx, calling):
        return
    if node.require_known_callers and ctx.cfg.peer_by_ae(calling) is None:
        log.warning("rejected association from unknown calling AE %r (%s)", calling, event.assoc.requestor.address)
        # permanent, service user, calling AE title not recognised
        _reject(event, 0x01, 0x01, 0x03)
        ASSOCIATIONS.labels(outcome="rejected_unknown_ae").inc()
        return
    free = free_disk_mb(ctx)
    if free < node.min_free_disk_mb:
        log.warning(
            "rejected association from %r: %.0f MiB free in storage, below node.min_free_disk_mb=%d",
            calling, free, node.min_free_disk_mb,
        )
        # transient, presentation related, temporary congestion
        _reject(event, 0x02, 0x03, 0x01)
        ASSOCIATIONS.labels(outcome="rejected_disk").inc()
        return
    full = quota_refusal(ctx)
    if full:
        log.warning("rejected association from %r: %s", calling, full)
        _reject(event, 0x02, 0x03, 0x01)  # transient: recycling frees space once jobs and deliveries finish
        ASSOCIATIONS.labels(outcome="rejected_quota").inc()
        return
    ASSOCIATIONS.labels(outcome="accepted").inc()
