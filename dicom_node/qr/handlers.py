"""pynetdicom C-FIND, C-MOVE and C-GET handlers: validate, call dicom_node.qr, map to DIMSE statuses.

pynetdicom runs the DIMSE state machine (pending responses, sub-operation counts, the Failed SOP
Instance UID List, the final status); these generators only say what to send. Each request ends
with one log line (calling AE, level, counts, time) and never names a patient.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
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
from dicom_node.handlers import NodeContext
from dicom_node.qr.attributes import model_of_sop_class
from dicom_node.qr.find import FindOutcome, find
from dicom_node.qr.matching import QueryError
from dicom_node.qr.on_demand import OnDemandError, OnDemandProvider, on_demand_provider
from dicom_node.qr.query import parse_query
from dicom_node.qr.retrieve import RetrievePlan, StoredInstance, plan_retrieve, produced_datasets, read_ahead

log = logging.getLogger("srnode.qr")

FIND_SOP_CLASSES = [PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind]
MOVE_SOP_CLASSES = [PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove]
GET_SOP_CLASSES = [PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet]
QR_SOP_CLASSES = FIND_SOP_CLASSES + MOVE_SOP_CLASSES + GET_SOP_CLASSES

PENDING = 0xFF00
CANCEL = 0xFE00
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO
    return ds


def _unreadable(item: StoredInstance) -> Dataset:
    # No file meta, so the C-STORE sub-operation fails before sending and pynetdicom puts this
    # SOP Instance UID into the Failed SOP Instance UID List, as PS3.4 C.4.2.1.4.2 asks.
    ds = Dataset()
    ds.SOPClassUID = item.sop_class_uid
    ds.SOPInstanceUID = item.sop_instance_uid
    return ds


def store_contexts(plan: RetrievePlan) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination: one per (SOP class, encoding) in the plan."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in plan.stored:
        ts = UID(item.transfer_syntax_uid or ExplicitVRLittleEndian)
        # Uncompressed: either native syntax (pynetdicom converts); compressed: exactly the stored one.
        syntaxes = tuple(UNCOMPRESSED) if ts in UNCOMPRESSED or ts == "1.2.840.10008.1.2.2" else (ts,)
        wanted[(item.sop_class_uid, syntaxes)] = None
    for v in plan.virtual:
        wanted[(_modality_storage_class(v.modality), tuple(UNCOMPRESSED))] = None
    contexts = [build_context(sop, list(syntaxes)) for sop, syntaxes in wanted]
    return contexts[:MAX_CONTEXTS]


def _modality_storage_class(modality: str) -> str:
    return {"MR": "1.2.840.10008.5.1.4.1.1.4"}.get(modality, "1.2.840.10008.5.1.4.1.1.2")


def _fit_to_get_context(ds: Dataset, assoc: Any) -> Dataset:
    """Decompress when the C-GET requester did not accept the stored (compressed) syntax."""
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None or not ts.is_compressed:
        return ds
    accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID]
    if any(ts in cx.transfer_syntax for cx in accepted):
        return ds
    if any(s in cx.transfer_syntax for cx in accepted for s in UNCOMPRESSED):
        ds.decompress()
    return ds


@dataclass
class QRService:
    """The Q/R side of one node: config, the index and the on-demand provider, used by the handlers."""

    cfg: SRNodeConfig
    sessions: sessionmaker[Session]
    storage_dir: Path
    provider: OnDemandProvider = field(default_factory=on_demand_provider)

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
                               provider=self.provider, outcome=outcome):
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
        model = model_of_sop_class(event.request.AffectedSOPClassUID)
        query = parse_query(event.identifier, model)
        with self.sessions() as session:
            return plan_retrieve(session, query, self.storage_dir, self.provider)

    def _sub_operations(self, event: evt.Event, plan: RetrievePlan, fit: Any = None) -> Iterator[tuple[Any, Any]]:
        """(status, dataset) pairs: Pending + dataset per instance, Cancel when asked to stop."""
        for item, (_, ds) in zip(plan.stored, read_ahead([s.path for s in plan.stored])):
            if event.is_cancelled:
                yield CANCEL, None
                return
            if isinstance(ds, Exception):
                log.warning("retrieve: stored file of instance %s unreadable (%s)", item.sop_instance_uid,
                            type(ds).__name__)
                yield PENDING, _unreadable(item)
                continue
            yield PENDING, fit(ds) if fit else ds
        for virtual in plan.virtual:
            try:
                for produced, ds in produced_datasets(self.provider, virtual):
                    if event.is_cancelled:
                        yield CANCEL, None
                        return
                    if isinstance(ds, Exception):
                        yield PENDING, _unreadable(StoredInstance(produced.sop_instance_uid, "", "", produced.path))
                        continue
                    yield PENDING, fit(ds) if fit else ds
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
        except (QueryError, KeyError, ValueError, AttributeError) as exc:
            log.warning("C-MOVE from %s to %s refused: %s", caller, destination, exc)
            # pynetdicom asks for the destination and a count before any status; one failed
            # sub-operation carries the failure and its comment.
            yield peer.host, peer.port, {"contexts": [build_context("1.2.840.10008.1.1")]}
            yield 1
            yield _status(0xA900, str(exc)), None
            return
        yield peer.host, peer.port, {"contexts": store_contexts(plan)}
        yield plan.count
        sent = 0
        try:
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
        except (QueryError, KeyError, ValueError, AttributeError) as exc:
            log.warning("C-GET from %s refused: %s", caller, exc)
            yield 1
            yield _status(0xA900, str(exc)), None
            return
        yield plan.count
        sent = 0
        try:
            for status, ds in self._sub_operations(event, plan, fit=lambda d: _fit_to_get_context(d, event.assoc)):
                sent += status == PENDING
                yield status, ds
        finally:
            log.info("C-GET from %s: %d sub-operations planned, %d started, %.2f s", caller, plan.count, sent,
                     time.monotonic() - started)

    def handlers(self) -> list[tuple[Any, Any]]:
        """(event, handler) pairs to bind on the node's AE."""
        return [(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_MOVE, self.on_move), (evt.EVT_C_GET, self.on_get)]


# --- the dicom_node.handlers registry interface --------------------------------------------------
def bind(ctx: NodeContext) -> list[tuple[Any, Any]]:
    """Q/R handlers for the node's AE (registry hook of dicom_node.handlers)."""
    service = QRService(ctx.cfg, ctx.session_factory, ctx.storage_dir)
    ctx.extras["qr"] = service
    return service.handlers()


def scp_contexts() -> list[PresentationContext]:
    """FIND/MOVE/GET contexts, plus the storage contexts again with both roles allowed.

    C-GET sends C-STORE on the requester's association, so the requester proposes SCP/SCU role
    selection for storage classes and the node must accept the SCP role for it; a storage context
    without roles would refuse that. List this module before dicom_node.handlers.store (the AE
    keeps the first context per SOP class).
    """
    from dicom_node.handlers import store  # the node's storage contexts, one definition

    contexts = [build_context(uid, list(UNCOMPRESSED) + [ExplicitVRBigEndian]) for uid in QR_SOP_CLASSES]
    for cx in store.scp_contexts():
        both = build_context(cx.abstract_syntax, cx.transfer_syntax)
        both.scu_role = True
        both.scp_role = True
        contexts.append(both)
    return contexts
