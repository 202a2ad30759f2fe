"""pynetdicom C-FIND, C-MOVE and C-GET handlers: validate, call dicom_node.qr, map to DIMSE statuses.

pynetdicom runs the DIMSE state machine (pending responses, sub-operation counts, the Failed SOP
Instance UID List, the final status); these generators only say what to send. Each request ends
with one log line (calling AE, level, counts, time) and never names a patient.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.ae import set_tcp_nodelay
from dicom_node.dimse import fast_store, pynetdicom_adapter
from dicom_node.dimse.fast_store import StoredFile
from dicom_node.qr.attributes import model_of_sop_class
from dicom_node.qr.find import FindOutcome, find
from dicom_node.qr.matching import QueryError
from dicom_node.qr.on_demand import NO_ON_DEMAND, OnDemandError, OnDemandProvider
from dicom_node.qr.query import parse_query
from dicom_node.qr.retrieve import RetrievePlan, plan_retrieve, produced_file

log = logging.getLogger("srnode.qr")

FIND_SOP_CLASSES = [PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind]
MOVE_SOP_CLASSES = [PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove]
GET_SOP_CLASSES = [PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet]
QR_SOP_CLASSES = FIND_SOP_CLASSES + MOVE_SOP_CLASSES + GET_SOP_CLASSES

PENDING = 0xFF00
CANCEL = 0xFE00
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128
# C-FIND lets the DUL read incoming PDUs (a C-CANCEL) at least every this many responses.
CANCEL_CHECK_EVERY = 16
PENDING_INTERVAL_S = 0.1  # PS3.8: presentation context IDs are odd numbers 1..255


class _Unavailable(RuntimeError):
    """The index could not be read; the retrieve fails with 0xA701 (out of resources)."""


def _failure_status(exc: Exception) -> int:
    return 0xA701 if isinstance(exc, _Unavailable) else 0xA900


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO
    return ds


def store_contexts(plan: RetrievePlan) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination: one per (SOP class, encoding) in the plan."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in plan.stored:
        ts = UID(item.transfer_syntax_uid or ExplicitVRLittleEndian)
        # Uncompressed: either native syntax (pynetdicom converts). Compressed: the stored syntax in
        # its own context, plus uncompressed ones in case the destination can't take it
        # (fast_store then decompresses).
        if ts.is_compressed:
            wanted[(item.sop_class_uid, (ts,))] = None
        wanted[(item.sop_class_uid, tuple(UNCOMPRESSED))] = None
    for v in plan.virtual:
        wanted[(_modality_storage_class(v.modality), tuple(UNCOMPRESSED))] = None
    contexts = [build_context(sop, list(syntaxes)) for sop, syntaxes in wanted]
    return contexts[:MAX_CONTEXTS]


@contextmanager
def throttled_pending(assoc: Any) -> Iterator[None]:
    """Send C-MOVE/C-GET Pending responses at most every PENDING_INTERVAL_S while the block runs.

    Pending responses are optional (PS3.4 C.4.2.1.5, C.4.3.1.5); pynetdicom sends one per
    sub-operation, which costs as much as the sub-operation's own command. The requester still
    sees the counts move several times a second, and the final response always goes out.
    """
    last = 0.0

    def too_soon(primitive: Any) -> bool:
        nonlocal last
        if isinstance(primitive, (C_MOVE, C_GET)) and primitive.Status == PENDING:
            now = time.monotonic()
            if now - last < PENDING_INTERVAL_S:
                return True
            last = now
        return False

    with pynetdicom_adapter.dropping_sent_messages(assoc, too_soon):
        yield


def _prepare_sub_association(event: evt.Event) -> None:
    """EVT_CONN_OPEN of a C-MOVE sub-association: no Nagle, and stored files streamed as they are."""
    set_tcp_nodelay(event)
    fast_store.install(event.assoc)


def _modality_storage_class(modality: str) -> str:
    return {"MR": "1.2.840.10008.5.1.4.1.1.4"}.get(modality, "1.2.840.10008.5.1.4.1.1.2")


@dataclass
class QRService:
    """The Q/R side of one node: config, the index and the on-demand provider, used by the handlers."""

    cfg: SRNodeConfig
    sessions: sessionmaker[Session]
    storage_dir: Path
    # The node's OnDemandSlot (dicom_node.scp_wiring): asks what its pipeline installed, per request.
    provider: OnDemandProvider = NO_ON_DEMAND

    @property
    def on_demand(self) -> OnDemandProvider:
        return self.provider

    # --- C-FIND -------------------------------------------------------------------------------
    def on_find(self, event: evt.Event) -> Iterator[tuple[Any, Dataset | None]]:
        """EVT_C_FIND: one pending response per match; cancel and the result limit honoured."""
        started = time.monotonic()
        caller = event.assoc.requestor.ae_title
        try:
            model = model_of_sop_class(event.request.AffectedSOPClassUID)
            query = parse_query(event.identifier, model)
        except (QueryError, KeyError, ValueError, AttributeError) as exc:
            log.warning("C-FIND from %s refused: %s", caller, exc)
            yield _status(0xA900, str(exc)), None
            return
        outcome = FindOutcome()
        limit = self.cfg.query_retrieve.max_results
        sent = 0
        ending = "done"
        try:
            with self.sessions() as session:
                for ds in find(session, query, limit=limit, retrieve_ae=self.cfg.node.ae_title,
                               provider=self.on_demand, outcome=outcome):
                    if sent and sent % CANCEL_CHECK_EVERY == 0:
                        # The DUL reads a C-CANCEL only once it has sent everything queued.
                        pynetdicom_adapter.wait_until_sent(event.assoc)
                    if event.is_cancelled:
                        ending = "cancelled"
                        yield CANCEL, None
                        return
                    sent += 1
                    yield PENDING, ds
            if outcome.truncated:
                ending = f"stopped at the limit of {limit}"
                yield _status(0xA700, f"more than {limit} matches; narrow the query"), None
        except SQLAlchemyError as exc:
            ending = f"failed: {type(exc).__name__}"
            yield _status(0xC001, "index query failed"), None
        finally:
            log.info("C-FIND from %s: %s level, %d keys matched on, %d results, %s, %.0f ms", caller,
                     query.level.name, len(query.conditions), sent, ending, 1000 * (time.monotonic() - started))

    # --- C-MOVE / C-GET shared ----------------------------------------------------------------
    def _plan(self, event: evt.Event) -> RetrievePlan:
        """The retrieve plan; QueryError (0xA900) for a bad identifier, _Unavailable (0xA701) if the index fails."""
        model = model_of_sop_class(event.request.AffectedSOPClassUID)
        query = parse_query(event.identifier, model)
        try:
            with self.sessions() as session:
                return plan_retrieve(session, query, self.storage_dir, self.on_demand)
        except SQLAlchemyError as exc:
            raise _Unavailable(f"index query failed ({type(exc).__name__})") from exc

    def _sub_operations(self, event: evt.Event, plan: RetrievePlan) -> Iterator[tuple[Any, Any]]:
        """(status, dataset) pairs: Pending + StoredFile per instance, Cancel when asked to stop."""
        files = (StoredFile(i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.path) for i in plan.stored)
        for stored in fast_store.read_ahead(files):
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, stored
        for virtual in plan.virtual:
            try:
                for produced in self.on_demand.materialise(virtual.series_uid):
                    if event.is_cancelled:
                        yield CANCEL, None
                        return
                    yield PENDING, produced_file(produced)
            except OnDemandError as exc:
                log.warning("retrieve: on-demand series %s failed: %s", virtual.series_uid, exc)
                yield _status(0xA702, f"on-demand job failed: {exc}"), None
                return

    # --- C-MOVE -------------------------------------------------------------------------------
    def on_move(self, event: evt.Event) -> Iterator[Any]:
        """EVT_C_MOVE: destination from `peers` only (else 0xA801), then one sub-operation per instance."""
        started = time.monotonic()
        caller = event.assoc.requestor.ae_title
        destination = event.move_destination or ""
        peer = self.cfg.peer_by_ae(destination)
        if peer is None:
            log.warning("C-MOVE from %s refused: destination %r is not in peers (0xA801)", caller, destination)
            yield None, None
            return
        try:
            plan = self._plan(event)
        except (QueryError, _Unavailable, KeyError, ValueError, AttributeError) as exc:
            log.warning("C-MOVE from %s to %s refused: %s", caller, destination, exc)
            # pynetdicom asks for the destination and a count before any status; one failed
            # sub-operation carries the failure and its comment.
            yield peer.host, peer.port, {"contexts": [build_context("1.2.840.10008.1.1")]}
            yield 1
            yield _status(_failure_status(exc), str(exc)), None
            return
        yield peer.host, peer.port, {"contexts": store_contexts(plan),
                                     "evt_handlers": [(evt.EVT_CONN_OPEN, _prepare_sub_association)]}
        yield plan.count
        sent = 0
        try:
            with throttled_pending(event.assoc):
                for status, ds in self._sub_operations(event, plan):
                    sent += status == PENDING
                    yield status, ds
        finally:
            log.info("C-MOVE from %s to %s: %d sub-operations planned, %d started, %.2f s", caller,
                     destination, plan.count, sent, time.monotonic() - started)

    # --- C-GET --------------------------------------------------------------------------------
    def on_get(self, event: evt.Event) -> Iterator[Any]:
        """EVT_C_GET: C-STORE sub-operations on the requester's own association and contexts."""
        started = time.monotonic()
        caller = event.assoc.requestor.ae_title
        try:
            plan = self._plan(event)
        except (QueryError, _Unavailable, KeyError, ValueError, AttributeError) as exc:
            log.warning("C-GET from %s refused: %s", caller, exc)
            yield 1
            yield _status(_failure_status(exc), str(exc)), None
            return
        yield plan.count
        sent = 0
        try:
            fast_store.install(event.assoc)
            with throttled_pending(event.assoc):
                for status, ds in self._sub_operations(event, plan):
                    sent += status == PENDING
                    yield status, ds
        finally:
            log.info("C-GET from %s: %d sub-operations planned, %d started, %.2f s", caller, plan.count, sent,
                     time.monotonic() - started)


# --- SCP contexts (dicom_node.scp_wiring lists them with the handlers) ----------------------------
def scp_contexts(storage: list[PresentationContext]) -> list[PresentationContext]:
    """FIND/MOVE/GET contexts, plus the storage contexts `storage` again with both roles allowed.

    C-GET sends C-STORE on the requester's association, so the requester proposes SCP/SCU role
    selection for storage classes and the node must accept the SCP role for it; a storage context
    without roles would refuse that. dicom_node.scp_wiring passes dicom_node.handlers.store's (one
    definition) and lists these before them (the AE keeps the first context per SOP class).
    """
    contexts = [build_context(uid, [*UNCOMPRESSED, ExplicitVRBigEndian]) for uid in QR_SOP_CLASSES]
    for cx in storage:
        both = build_context(cast(str, cx.abstract_syntax), list(cx.transfer_syntax))
        both.scu_role = True
        both.scp_role = True
        contexts.append(both)
    return contexts
