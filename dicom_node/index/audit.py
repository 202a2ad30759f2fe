"""Audit rows for changes: only the parts that changed, before → after, and how it was made.

One format for every writer (admin routes, the run-time config, the CLI), so that the audit log
can show a per-modality change and a JSON edit of the same rules as different things.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.orm import Session

from dicom_node.index.models import Audit

_MISSING = object()


def changed_parts(before: Any, after: Any) -> tuple[Any, Any]:
    """The parts of `before` and `after` that differ: dicts keep only differing keys, lists of equal
    length only differing positions (as {"3": …}); anything else is returned whole."""
    if isinstance(before, dict) and isinstance(after, dict):
        b_out, a_out = {}, {}
        for key in [*before, *(k for k in after if k not in before)]:
            b, a = before.get(key, _MISSING), after.get(key, _MISSING)
            if b == a:
                continue
            if b is _MISSING or a is _MISSING:
                if b is not _MISSING:
                    b_out[key] = b
                if a is not _MISSING:
                    a_out[key] = a
                continue
            b_out[key], a_out[key] = changed_parts(b, a)
        return b_out, a_out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return changed_parts({str(i): v for i, v in enumerate(before)}, {str(i): v for i, v in enumerate(after)})
    return before, after


def token_fingerprint(token: str) -> str:
    """First 8 hex digits of the token's sha256: identifies a token without revealing it (the actor
    of an unnamed admin token in audit rows, a reader in reader-study records)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def audit_change(session: Session, actor: str, action: str, before: Any, after: Any, how: str) -> Audit:
    """Add an audit row for a change: what changed before → after, and `how` it was made (e.g.
    "per-modality", "json", "retry-now"), so that two ways of making a change read differently."""
    b, a = changed_parts(before, after)
    row = Audit(actor=actor, action=action, detail=json.dumps({"before": b, "after": a, "how": how}, sort_keys=True))
    session.add(row)
    return row
