"""Build the node's pynetdicom AE (and TLS context) from configuration."""
from __future__ import annotations

import socket
import ssl
from typing import Any

from pynetdicom import AE, evt

from config.schema import SRNodeConfig, TLSConfig

# Large PDUs: fewer, bigger reads per instance (the peer's own maximum still applies).
MAX_PDU_SIZE = 4 * 1024 * 1024


def tls_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """Server-side TLS context from node.tls (None when TLS is off)."""
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if tls.ca:
        ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE
    return ctx


def build_ae(cfg: SRNodeConfig, contexts: list[Any]) -> AE:
    """An AE with the node's title, limits and the given SCP presentation contexts."""
    ae = AE(ae_title=cfg.node.ae_title)
    ae.maximum_associations = cfg.node.max_associations
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 120
    # Called- and calling-AE checks are done by dicom_node.handlers.association (one log line and
    # a metric per rejection; node.require_called_ae decides whether the called title must match).
    ae.require_called_aet = False
    seen: set[str] = set()
    for cx in contexts:
        if cx.abstract_syntax in seen:
            continue
        seen.add(cx.abstract_syntax)
        ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax, scu_role=cx.scu_role, scp_role=cx.scp_role)
    return ae


def set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: turn off Nagle's algorithm on the association's socket.

    pynetdicom writes a PDU header and its data separately; with Nagle on, every small write
    after a full-size one waits for the peer's delayed ACK (~40 ms), which caps C-STORE
    sub-operations and outbox deliveries at ~25/s. DCMTK does the same when TCP_NODELAY=1 is set.
    Bound on the node's AE and on every association the node opens as an SCU.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket (e.g. already closed): nothing to tune
            pass


# For ae.associate(..., evt_handlers=NODELAY): the SCU side of the same fix.
NODELAY: list[evt.EventHandlerType] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
