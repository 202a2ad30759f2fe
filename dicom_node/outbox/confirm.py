"""In-doubt deliveries: ask the peer (C-FIND, Study Root, IMAGE level) which instances it has.

A C-STORE whose response never arrived (the node died, the association broke mid-instance) may or
may not have been stored by the peer; no sender can know. Sending it again is harmless to a PACS
that keys on the SOP Instance UID, but it is a duplicate at a peer that keeps every reception. A
peer that answers C-FIND says which it has, so those are marked delivered instead of sent again.
A peer without C-FIND (or one that fails the query) gets them again: at least once.
"""
from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from config.schema import PeerConfig

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
UIDS_PER_QUERY = 100  # list of UID matching (PS3.4 C.2.2.2.2); keeps each request small


def instances_at_peer(calling_ae: str, peer: PeerConfig, keys: Iterable[tuple[str, str, str]],
                      tls_args: tuple[ssl.SSLContext, str] | None = None, timeout_s: float = 30.0) -> set[str] | None:
    """SOP Instance UIDs among `keys` ((study, series, sop) UIDs) that the peer reports having.

    None when the peer cannot tell: no association, no C-FIND context, or a failed query.
    """
    by_series: dict[tuple[str, str], list[str]] = defaultdict(list)
    for study, series, sop in keys:
        by_series[(study, series)].append(sop)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        if not assoc.accepted_contexts:
            return None
        found: set[str] = set()
        for (study, series), sops in by_series.items():
            for start in range(0, len(sops), UIDS_PER_QUERY):
                answer = _query(assoc, study, series, sops[start:start + UIDS_PER_QUERY])
                if answer is None:
                    return None
                found |= answer
        return found & {sop for sops in by_series.values() for sop in sops}
    finally:
        if assoc.is_established:
            assoc.release()


def _query(assoc, study: str, series: str, sops: list[str]) -> set[str] | None:  # type: ignore[no-untyped-def]
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study
    query.SeriesInstanceUID = series
    query.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
    found: set[str] = set()
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(getattr(status, "Status", -1)) if status else -1
        if code in PENDING and identifier is not None:
            found.add(str(identifier.get("SOPInstanceUID", "")))
        elif code != 0x0000:
            return None  # failed, cancelled or association lost: cannot tell
    return found
