"""The node's one clock: timezone-aware UTC now (every time in the index is UTC)."""
from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)
