"""C-ECHO a configured peer (the console's "test" button); a DICOMweb peer gets a QIDO-RS instead."""
from __future__ import annotations

import time
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config.schema import AnyPeer, DicomwebPeerConfig
from dicom_node.outbox.stow import StowClient


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: int | None
    elapsed_ms: float
    error: str


def echo_peer(peer: AnyPeer, calling_ae: str, timeout_s: float = 5.0) -> EchoResult:
    """Associate with `peer` as `calling_ae`, send one C-ECHO, release; never raises."""
    if isinstance(peer, DicomwebPeerConfig):
        started = time.perf_counter()
        ok, error = StowClient(peer.model_copy(update={"timeout_s": timeout_s})).echo()
        return EchoResult(ok, None, (time.perf_counter() - started) * 1000, error)
    if peer.tls:
        # The node's TLS client context is built by the DICOM side; until the admin API can reuse
        # it, say so instead of sending plaintext to a TLS port.
        return EchoResult(False, None, 0.0, "C-ECHO over TLS is not supported by the admin API yet")
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    started = time.perf_counter()
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    except Exception as exc:  # noqa: BLE001 - DNS failures etc. become a result, not a 500
        return EchoResult(False, None, (time.perf_counter() - started) * 1000, f"association failed: {exc}")
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        return EchoResult(False, None, (time.perf_counter() - started) * 1000, f"association {why}")
    try:
        rsp = assoc.send_c_echo()
        status = int(rsp.Status) if rsp and "Status" in rsp else None
    finally:
        assoc.release()
    elapsed = (time.perf_counter() - started) * 1000
    if status is None:
        return EchoResult(False, None, elapsed, "no C-ECHO response")
    return EchoResult(status == 0, status, elapsed, "" if status == 0 else f"status 0x{status:04X}")
