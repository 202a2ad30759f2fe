"""C-ECHO: answer Success to any accepted association."""
from __future__ import annotations

from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import


def handle_echo(event: evt.Event) -> int:
    """Verification always succeeds once the association was accepted."""
    return 0x0000


def scp_contexts() -> list[PresentationContext]:
    """Verification SOP class."""
    return [build_context(Verification)]
