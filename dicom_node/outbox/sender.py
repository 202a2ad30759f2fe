"""C-STORE SCU that drains the outbox: one worker thread per destination, backoff on failure.

Destinations are drained concurrently, so a peer that is down (connect timeouts) never holds up
the others; a failed attempt only moves that row's next_attempt_at forward.
"""
from __future__ import annotations

import logging
import ssl
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from sqlalchemy.orm import Session, sessionmaker

from config.schema import PeerConfig, SRNodeConfig
from dicom_node.ae import NODELAY
from dicom_node.index.db import session_scope
from dicom_node.outbox.queue import DueItem, due_destinations, due_items, mark_delivered, mark_failed_attempt
from dicom_node.polling import PollingThread
from dicom_node.storage import resolve_in

log = logging.getLogger(__name__)

# C-STORE statuses that mean the peer has the instance (success and the PS3.4 warnings).
DELIVERED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128


def _contexts(items: list[DueItem]) -> list:
    # Offer each SOP class in its stored transfer syntax and uncompressed, so a peer that lacks the
    # codec still gets the instance (decompressed) instead of a rejection.
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        native = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
        wanted[(item.sop_class_uid, native)] = None
        if item.transfer_syntax_uid and item.transfer_syntax_uid not in native:
            wanted[(item.sop_class_uid, (item.transfer_syntax_uid,))] = None
    return [build_context(sop, list(ts)) for sop, ts in list(wanted)[:MAX_CONTEXTS]]


def _accepted(assoc, sop_class: str, transfer_syntax: str) -> bool:  # type: ignore[no-untyped-def]
    return any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == transfer_syntax
               for cx in assoc.accepted_contexts)


class OutboxSender:
    """Background service: send due outbox rows to their peers until delivered (table-driven)."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], storage_dir: Path,
                 poll_s: float = 0.5, batch: int = 200, connect_timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self.factory = factory
        self.storage_dir = Path(storage_dir)
        self.batch = batch
        self.connect_timeout_s = connect_timeout_s
        self._busy: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(cfg.peers) or 1)),
                                        thread_name_prefix="srnode-send")
        self._poller = PollingThread("srnode-outbox", self.run_once, poll_s, "outbox pass", log)

    # -- service -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the polling thread."""
        self._poller.start()

    def stop(self) -> None:
        """Stop polling and wait for the destinations being drained."""
        self._poller.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wake(self) -> None:
        """Look at the outbox now instead of at the next poll."""
        self._poller.wake()

    def run_once(self) -> None:
        """Start draining every destination that has due rows and is not already being drained."""
        with self.factory() as session:
            destinations = due_destinations(session)
        for dest in destinations:
            running = self._busy.get(dest)
            if running is not None and not running.done():
                continue
            self._busy[dest] = self._pool.submit(self.drain, dest)

    # -- one destination ---------------------------------------------------------------------
    def drain(self, destination: str) -> int:
        """Send every due row of one destination over one association; returns how many delivered."""
        with self.factory() as session:
            items = due_items(session, destination, self.batch)
        if not items:
            return 0
        peer = self.cfg.peers.get(destination)
        if peer is None:
            self._fail_all(items, f"destination {destination!r} is not a configured peer")
            return 0
        ae = AE(ae_title=self.cfg.node.ae_title)
        ae.acse_timeout = self.connect_timeout_s
        ae.network_timeout = max(30.0, self.connect_timeout_s)
        ae.dimse_timeout = 120
        ae.requested_contexts = _contexts(items)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=self._tls(peer),
                             evt_handlers=NODELAY)
        if not assoc.is_established:
            self._fail_all(items, f"cannot associate with {destination} ({peer.ae_title}@{peer.host}:{peer.port})")
            return 0
        delivered = 0
        try:
            for item in items:
                if self._poller.stopping or not assoc.is_established:
                    break
                delivered += self._send_one(assoc, item)
        finally:
            if assoc.is_established:
                assoc.release()
        if delivered:
            log.info("outbox: delivered %d instance(s) to %s", delivered, destination)
        return delivered

    def _send_one(self, assoc, item: DueItem) -> int:  # type: ignore[no-untyped-def]
        try:
            ds = dcmread(resolve_in(self.storage_dir, item.file_path))
            if not _accepted(assoc, item.sop_class_uid, item.transfer_syntax_uid) and ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress()
            status = assoc.send_c_store(ds)
        except (OSError, ValueError, RuntimeError) as exc:
            return self._record(item, f"cannot send {item.sop_instance_uid}: {exc}")
        code = int(getattr(status, "Status", -1)) if status else -1
        if code in DELIVERED_STATUSES:
            with session_scope(self.factory) as session:
                mark_delivered(session, item.outbox_id)
            return 1
        reason = "association lost" if code == -1 else f"C-STORE status 0x{code:04X}"
        return self._record(item, f"{item.destination} refused {item.sop_instance_uid}: {reason}")

    def _record(self, item: DueItem, error: str) -> int:
        with session_scope(self.factory) as session:
            state = mark_failed_attempt(session, item.outbox_id, error, self.cfg.send)
        log.warning("outbox: %s (attempt %d%s)", error, item.attempts + 1,
                    ", giving up" if state.value == "failed" else "")
        return 0

    def _fail_all(self, items: list[DueItem], error: str) -> None:
        with session_scope(self.factory) as session:
            for item in items:
                mark_failed_attempt(session, item.outbox_id, error, self.cfg.send)
        log.warning("outbox: %s; %d instance(s) wait for the next attempt", error, len(items))

    @staticmethod
    def _tls(peer: PeerConfig) -> tuple[ssl.SSLContext, str] | None:
        if not peer.tls:
            return None
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH), peer.host


__all__ = ["OutboxSender", "DELIVERED_STATUSES"]
