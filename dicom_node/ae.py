"""Build the node's pynetdicom AE (and TLS context) from configuration."""
from __future__ import annotations

import ssl
from typing import Any

from pynetdicom import AE

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
    # Calling-AE checks are done (and logged) by dicom_node.handlers.association.
    ae.require_called_aet = False
    seen: set[str] = set()
    for cx in contexts:
        if cx.abstract_syntax in seen:
            continue
        seen.add(cx.abstract_syntax)
        ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax, scu_role=cx.scu_role, scp_role=cx.scp_role)
    return ae
