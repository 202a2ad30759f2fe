"""C-STORE SCU that drains the outbox: per destination `send.associations_per_destination`
worker threads, each with its own association and its own share of the rows; backoff on failure.

Destinations are drained concurrently, so a peer that is down (connect timeouts) never holds up
the others; a failed attempt only moves that row's next_attempt_at forward. The associations of one
destination take disjoint rows (row id modulo their count, see queue.due_items), so no row is ever
sent twice at once. Each instance goes out as its stored file's bytes (dicom_node.dimse.fast_store:
no decode and re-encode, one socket write) while the next file is read, and delivered rows are
marked in one commit per DELIVERED_COMMIT_ROWS rows or DELIVERED_COMMIT_S seconds (measured:
BENCHMARKS.md, "Outbox"). A crash between a delivery and its commit sends that instance again
after the restart: at least once, never lost.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from sqlalchemy.orm import Session, sessionmaker

from config.schema import AnyPeer, DicomwebPeerConfig, PeerConfig, SRNodeConfig
from dicom_node.ae import NODELAY
from dicom_node.dimse.fast_store import StoredFile, install, read_ahead
from dicom_node.index.db import session_scope
from dicom_node.outbox.confirm import instances_at_peer
from dicom_node.outbox.queue import (
    DueItem,
    due_destinations,
    due_items,
    mark_delivered_many,
    mark_failed_attempt,
    mark_handed,
    retry_now,
    series_keys,
)
from dicom_node.outbox.stow import StowClient, StowUnavailable
from dicom_node.polling import PollingThread
from dicom_node.storage import resolve_in

log = logging.getLogger(__name__)

# C-STORE statuses that mean the peer has the instance (success and the PS3.4 warnings).
DELIVERED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128
# Delivered marks are committed in groups: a commit (fsync) per row cut the rate of 2048² slices
# from ~90 to ~59/s; a crash re-sends at most this many per association.
DELIVERED_COMMIT_ROWS = 32
DELIVERED_COMMIT_S = 0.5
MAX_SEND_THREADS = 32


class OutageLog:
    """One WARNING when a destination starts failing and one INFO when it delivers again, whatever
    the number of passes, lanes and rows in between (the same per-destination contract as the
    polling loops' "failed ... / works again" lines)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self._since: dict[str, float] = {}  # destination → monotonic time its outage began
        self._lock = threading.Lock()  # the lanes of a destination report from several threads

    def failing(self, destination: str, error: str) -> None:
        with self._lock:
            if destination in self._since:
                return
            self._since[destination] = time.monotonic()
        self.log.warning("outbox: %s; its instances wait and are retried with backoff (logged once per outage)",
                         error)

    def delivered(self, destination: str) -> bool:
        """Record a delivery; True if it ended an outage."""
        with self._lock:
            since = self._since.pop(destination, None)
        if since is not None:
            self.log.info("outbox: %s delivers again (outage of %.0f s)", destination, time.monotonic() - since)
        return since is not None


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


class OutboxSender:
    """Background service: send due outbox rows to their peers until delivered (table-driven)."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], storage_dir: Path,
                 poll_s: float = 0.5, batch: int = 200, connect_timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self.factory = factory
        self.storage_dir = Path(storage_dir)
        self.batch = batch
        self.connect_timeout_s = connect_timeout_s
        self.lanes = cfg.send.associations_per_destination
        self._busy: dict[tuple[str, int], Future] = {}
        self.outages = OutageLog(log)
        threads = max(1, min(MAX_SEND_THREADS, (len(cfg.peers) or 1) * self.lanes))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="srnode-send")
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
        """Start draining every lane of every destination with due rows that is not being drained."""
        with self.factory() as session:
            destinations = due_destinations(session)
        for dest in destinations:
            for lane in range(self.lanes):
                running = self._busy.get((dest, lane))
                if running is not None and not running.done():
                    continue
                self._busy[(dest, lane)] = self._pool.submit(self.drain, dest, lane)

    # -- one destination ---------------------------------------------------------------------
    def drain(self, destination: str, lane: int = 0) -> int:
        """Send the due rows of one lane of a destination, one association per batch, until none
        are due or an association fails; returns how many were delivered."""
        delivered = 0
        try:
            while not self._poller.stopping:
                with self.factory() as session:
                    items = due_items(session, destination, self.batch, lane=lane, lanes=self.lanes)
                if not items:
                    break
                sent, complete = self._send_batch(destination, items)
                delivered += sent
                if sent and self.outages.delivered(destination):
                    # Back: the rest of its backlog goes now, not when each row's backoff runs out.
                    with session_scope(self.factory) as session:
                        retry_now(session, destination)
                if not complete:  # the peer is down or went away: the next poll retries after backoff
                    break
        except Exception as exc:  # noqa: BLE001 - runs in the pool, where an exception would vanish
            # E.g. the index stayed locked: rows not marked stay pending and go again (at least once).
            log.warning("outbox: sending to %s stopped (%s: %s); the next pass retries", destination,
                        type(exc).__name__, str(exc)[:300])
        if delivered:
            log.info("outbox: delivered %d instance(s) to %s", delivered, destination)
        return delivered

    def _send_batch(self, destination: str, items: list[DueItem]) -> tuple[int, bool]:
        """One association for `items`: (delivered, whether every item got an answer)."""
        peer = self.cfg.peers.get(destination)
        if peer is None:
            self._fail_all(items, f"destination {destination!r} is not a configured peer")
            return 0, False
        confirmed, unconfirmed = 0, ""
        if any(item.in_doubt for item in items):
            items, confirmed, unconfirmed = self._settle_in_doubt(peer, items)
            if not items:
                return confirmed, True
        if isinstance(peer, DicomwebPeerConfig):
            sent, complete = self._send_batch_stow(destination, peer, items, unconfirmed)
            return confirmed + sent, complete
        assoc = self._associate(peer, items)
        if not assoc.is_established:
            self._fail_all(items, f"cannot associate with {destination} ({peer.ae_title}@{peer.host}:{peer.port})")
            return confirmed, False
        if unconfirmed:
            log.warning("outbox: %s whose delivery to %s was interrupted: sent again (at least once)",
                        unconfirmed, destination)
        install(assoc)
        with session_scope(self.factory) as session:
            mark_handed(session, [item.outbox_id for item in items])  # in doubt from here if we die
        delivered: list[int] = []  # marks not yet committed
        answered = count = 0
        last_commit = time.monotonic()
        try:
            for item, stored in zip(items, read_ahead(self._stored_files(items))):
                if self._poller.stopping or not assoc.is_established:
                    break
                if self._send_one(assoc, item, stored):
                    delivered.append(item.outbox_id)
                    count += 1
                answered += 1
                if len(delivered) >= DELIVERED_COMMIT_ROWS or time.monotonic() - last_commit >= DELIVERED_COMMIT_S:
                    self._commit_delivered(delivered)
                    last_commit = time.monotonic()
        finally:
            self._commit_delivered(delivered)
            with session_scope(self.factory) as session:  # never sent: not in doubt
                mark_handed(session, [item.outbox_id for item in items[answered:]], handed=False)
            if assoc.is_established:
                assoc.release()
        return confirmed + count, answered == len(items)

    def _send_batch_stow(self, destination: str, peer: DicomwebPeerConfig, items: list[DueItem],
                         unconfirmed: str) -> tuple[int, bool]:
        """`items` to a DICOMweb peer, in STOW-RS requests of peer.batch_instances / max_request_mb;
        the rows are marked exactly as the C-STORE path marks them (one retry and backoff policy)."""
        if unconfirmed:
            log.warning("outbox: %s whose delivery to %s was interrupted: sent again (at least once)",
                        unconfirmed, destination)
        client = StowClient(peer)
        with session_scope(self.factory) as session:
            mark_handed(session, [item.outbox_id for item in items])  # in doubt from here if we die
        answered: set[int] = set()  # rows with an outcome recorded (or left in doubt on purpose)
        count = 0
        try:
            for batch in self._stow_batches(items, peer, answered):
                if self._poller.stopping:
                    break
                try:
                    result = client.store([(item.sop_instance_uid, data) for item, data in batch])
                except StowUnavailable as exc:
                    # The batch on the wire stays in doubt; the rows after it were never sent.
                    answered.update(item.outbox_id for item, _ in batch)
                    self._fail_all([item for item in items if item.outbox_id not in answered]
                                   + [item for item, _ in batch], f"cannot store to {destination} by STOW-RS: {exc}")
                    return count, False
                delivered = []
                for item, _ in batch:
                    reason = result.refused.get(item.sop_instance_uid)
                    if reason is None:
                        delivered.append(item.outbox_id)
                    else:
                        self._record(item, f"{destination} refused {item.sop_instance_uid}: {reason}", answered=True)
                    answered.add(item.outbox_id)
                count += len(delivered)
                self._commit_delivered(delivered)
        finally:
            client.close()
            with session_scope(self.factory) as session:  # never sent: not in doubt
                mark_handed(session, [item.outbox_id for item in items if item.outbox_id not in answered],
                            handed=False)
        return count, len(answered) == len(items)

    def _stow_batches(self, items: list[DueItem], peer: DicomwebPeerConfig,
                      answered: set[int]) -> Iterator[list[tuple[DueItem, bytes]]]:
        """(item, file bytes) lists of at most peer.batch_instances items and max_request_mb bytes;
        an unreadable file is recorded as a failed attempt (added to `answered`) and left out."""
        limit = int(peer.max_request_mb * 1024 * 1024)
        batch: list[tuple[DueItem, bytes]] = []
        size = 0
        for item in items:
            try:
                data = resolve_in(self.storage_dir, item.file_path).read_bytes()
            except OSError as exc:
                self._record(item, f"cannot read the stored file of {item.sop_instance_uid}: {type(exc).__name__}",
                             answered=True)  # nothing was sent
                answered.add(item.outbox_id)
                continue
            if batch and (len(batch) >= peer.batch_instances or size + len(data) > limit):
                yield batch
                batch, size = [], 0
            batch.append((item, data))
            size += len(data)
        if batch:
            yield batch

    def _settle_in_doubt(self, peer: AnyPeer, items: list[DueItem]) -> tuple[list[DueItem], int, str]:
        """Mark delivered the in-doubt items the peer reports having (C-FIND, or QIDO-RS for a
        DICOMweb peer); return the rest to send, how many were confirmed, and what could not be
        confirmed (for the log, "" if none)."""
        doubtful = [item for item in items if item.in_doubt]
        found: set[str] | None = None
        if peer.confirm_in_doubt:
            with self.factory() as session:
                keys = series_keys(session, [item.outbox_id for item in doubtful])
            if isinstance(peer, DicomwebPeerConfig):
                client = StowClient(peer)
                found = client.present(keys.values())
                client.close()
            else:
                found = instances_at_peer(self.cfg.node.ae_title, peer, keys.values(), self._tls(peer),
                                          timeout_s=self.connect_timeout_s)
        if found is None:
            lookup = "QIDO-RS" if isinstance(peer, DicomwebPeerConfig) else "C-FIND"
            why = f"the peer gave no {lookup} answer" if peer.confirm_in_doubt else "peers.*.confirm_in_doubt is off"
            return items, 0, f"{len(doubtful)} instance(s) not confirmable ({why})"
        confirmed = {item.outbox_id for item in doubtful if item.sop_instance_uid in found}
        with session_scope(self.factory) as session:
            mark_delivered_many(session, sorted(confirmed))
        log.info("outbox: %d of %d instance(s) whose delivery to %s was interrupted are there (%s): "
                 "not sent again", len(confirmed), len(doubtful), items[0].destination,
                 "QIDO-RS" if isinstance(peer, DicomwebPeerConfig) else "C-FIND")
        return [item for item in items if item.outbox_id not in confirmed], len(confirmed), ""

    def _associate(self, peer: PeerConfig, items: list[DueItem]):  # type: ignore[no-untyped-def]
        ae = AE(ae_title=self.cfg.node.ae_title)
        ae.acse_timeout = self.connect_timeout_s
        ae.network_timeout = max(30.0, self.connect_timeout_s)
        ae.dimse_timeout = 120
        ae.requested_contexts = _contexts(items)
        return ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=self._tls(peer),
                            evt_handlers=NODELAY)

    def _stored_files(self, items: list[DueItem]):  # type: ignore[no-untyped-def]
        for item in items:
            yield StoredFile(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid,
                             resolve_in(self.storage_dir, item.file_path))

    def _send_one(self, assoc, item: DueItem, stored: StoredFile) -> bool:  # type: ignore[no-untyped-def]
        """C-STORE one stored file; True if the peer has it (the caller commits the mark)."""
        try:
            if stored.srnode_bytes is not None:
                stored.srnode_bytes.result()  # an unreadable file fails here, before anything is sent
        except OSError as exc:
            self._record(item, f"cannot read the stored file of {item.sop_instance_uid}: {type(exc).__name__}",
                         answered=True)  # nothing was sent
            return False
        try:
            status = assoc.send_c_store(stored)
        except OSError as exc:
            # The connection broke mid-instance: the association is unusable, so the batch stops
            # here (the rest wait, without an attempt counted, for the next association).
            assoc.abort()
            self._record(item, f"association lost while sending {item.sop_instance_uid}: {type(exc).__name__}")
            return False
        except (ValueError, RuntimeError) as exc:
            self._record(item, f"cannot send {item.sop_instance_uid}: {exc}")
            return False
        code = int(getattr(status, "Status", -1)) if status else -1
        if code in DELIVERED_STATUSES:
            return True
        reason = "association lost" if code == -1 else f"C-STORE status 0x{code:04X}"
        self._record(item, f"{item.destination} refused {item.sop_instance_uid}: {reason}", answered=code != -1)
        return False

    def _commit_delivered(self, delivered: list[int]) -> None:
        if delivered:
            with session_scope(self.factory) as session:
                mark_delivered_many(session, delivered)
            delivered.clear()

    def _record(self, item: DueItem, error: str, answered: bool = False) -> None:
        with session_scope(self.factory) as session:
            state = mark_failed_attempt(session, item.outbox_id, error, self.cfg.send, answered=answered)
        log.warning("outbox: %s (attempt %d%s)", error, item.attempts + 1,
                    ", giving up" if state.value == "failed" else "")

    def _fail_all(self, items: list[DueItem], error: str) -> None:
        with session_scope(self.factory) as session:
            for item in items:
                mark_failed_attempt(session, item.outbox_id, error, self.cfg.send)
        # Every association of a destination that is down fails, pass after pass: one line per outage.
        self.outages.failing(items[0].destination, error)

    @staticmethod
    def _tls(peer: PeerConfig) -> tuple[ssl.SSLContext, str] | None:
        if not peer.tls:
            return None
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH), peer.host


__all__ = ["OutboxSender", "OutageLog", "DELIVERED_STATUSES"]
