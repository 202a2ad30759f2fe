"""Deterministic UIDs for derived objects.

The same (source UID, model, checkpoint sha256, scale) always gives the same UID, so a retried or
redelivered job rewrites the same object in the PACS instead of adding a duplicate, and
query/retrieve can name a derived series before it exists.
"""
from __future__ import annotations

from pydicom.uid import generate_uid

# Separates the parts so ("a", "bc") and ("ab", "c") never collide.
_SEP = "\x1f"


def _uid(kind: str, source_uid: str, model: str, checkpoint_sha256: str, scale: int) -> str:
    parts = [kind, source_uid.strip(), model, (checkpoint_sha256 or "").lower(), str(int(scale))]
    return str(generate_uid(entropy_srcs=[_SEP.join(parts)]))


def derived_series_uid(source_series_uid: str, model: str, checkpoint_sha256: str, scale: int) -> str:
    """SeriesInstanceUID of the derived series made from `source_series_uid`."""
    return _uid("series", source_series_uid, model, checkpoint_sha256, scale)


def derived_sop_uid(source_sop_uid: str, model: str, checkpoint_sha256: str, scale: int) -> str:
    """SOPInstanceUID of the derived instance made from one source instance (classic encoding)."""
    return _uid("sop", source_sop_uid, model, checkpoint_sha256, scale)


def derived_multiframe_sop_uid(source_series_uid: str, model: str, checkpoint_sha256: str, scale: int) -> str:
    """SOPInstanceUID of the single enhanced multi-frame object made from a whole source series."""
    return _uid("enhanced", source_series_uid, model, checkpoint_sha256, scale)
