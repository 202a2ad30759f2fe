"""Usage accounting (sum of indexed file sizes, original vs derived), the operator's status, and
the quota check the association and C-STORE handlers ask (cached: it runs per request)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.schema import RetentionConfig
from dicom_node.clock import utcnow
from dicom_node.index.models import Instance, NodeSetting, Series
from dicom_node.retention import KINDS, MIB
from dicom_node.retention.eligibility import eligible_series

RECYCLED_BYTES_KEY = "retention.recycled_bytes"
# The handlers ask per association and per instance; the answer may be this old.
QUOTA_CHECK_TTL_S = 2.0


def usage_by_kind(session: Session, protected_only: bool = False) -> dict[str, int]:
    """Bytes of indexed instance files per kind ("original", "derived"), of protected series only if asked."""
    kind = case((Series.derived_from_job.is_(None), "original"), else_="derived")
    q = (select(kind, func.coalesce(func.sum(Instance.file_size), 0))
         .join(Series, Instance.series_pk == Series.id).group_by(kind))
    if protected_only:
        q = q.where(Series.protected.is_(True))
    found = {str(k): int(b) for k, b in session.execute(q).all()}
    return {k: found.get(k, 0) for k in KINDS}


def recycled_bytes(session: Session) -> int:
    """Bytes recycled since the index was created (kept in node_setting, updated with each recycle)."""
    value = session.scalar(select(NodeSetting.value).where(NodeSetting.key == RECYCLED_BYTES_KEY))
    return int(value or 0)


def add_recycled_bytes(session: Session, n: int) -> None:
    """Count `n` more recycled bytes in the caller's transaction (an SQL increment: no lost update)."""
    done = session.execute(update(NodeSetting).where(NodeSetting.key == RECYCLED_BYTES_KEY)
                           .values(value=func.cast(func.cast(NodeSetting.value, Instance.file_size.type) + n,
                                                   NodeSetting.value.type), updated_at=utcnow()))
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.add(NodeSetting(key=RECYCLED_BYTES_KEY, value=str(n)))


def quota_refusal(session: Session, rc: RetentionConfig) -> str:
    """"" or why new instances are refused: above retention.quota_mb with nothing eligible to recycle."""
    if rc.quota_mb is None:
        return ""
    used = sum(usage_by_kind(session).values())
    if used <= rc.quota_mb * MIB or eligible_series(session, rc, utcnow(), limit=1):
        return ""
    return (f"storage used {used / MIB:.1f} MiB is above retention.quota_mb={rc.quota_mb:g} and no series is "
            f"eligible for recycling (jobs or deliveries unfinished, protected, or younger than "
            f"keep_after_delivery_h={rc.keep_after_delivery_h:g})")


def storage_status(session: Session, rc: RetentionConfig) -> dict[str, Any]:
    """What `srnode storage status`, GET /api/storage and the console show."""
    by_kind = usage_by_kind(session)
    eligible = eligible_series(session, rc, utcnow())
    protected = session.execute(
        select(func.count(func.distinct(Series.id)), func.coalesce(func.sum(Instance.file_size), 0))
        .join(Instance, Instance.series_pk == Series.id).where(Series.protected.is_(True))).one()
    used = sum(by_kind.values())
    return {
        "used_bytes": used,
        "by_kind": by_kind,
        "quota_bytes": None if rc.quota_mb is None else int(rc.quota_mb * MIB),
        "eligible": {"series": len(eligible), "bytes": sum(c.bytes for c in eligible),
                     "by_kind": {k: sum(c.bytes for c in eligible if c.kind == k) for k in KINDS}},
        "protected": {"series": int(protected[0]), "bytes": int(protected[1]),
                      "by_kind": usage_by_kind(session, protected_only=True)},
        "recycled_bytes": recycled_bytes(session),
        "refusing": quota_refusal(session, rc),
        "keep_after_delivery_h": rc.keep_after_delivery_h,
    }


class QuotaCheck:
    """quota_refusal, recomputed at most every QUOTA_CHECK_TTL_S (one per node process)."""

    def __init__(self, factory: sessionmaker[Session], config: Callable[[], RetentionConfig]) -> None:
        self.factory, self.config = factory, config
        self._lock = threading.Lock()
        self._at = -QUOTA_CHECK_TTL_S
        self._answer = ""

    def refusal(self) -> str:
        rc = self.config()
        if rc.quota_mb is None:
            return ""
        with self._lock:
            if time.monotonic() - self._at >= QUOTA_CHECK_TTL_S:
                with self.factory() as session:
                    self._answer = quota_refusal(session, rc)
                self._at = time.monotonic()
            return self._answer
