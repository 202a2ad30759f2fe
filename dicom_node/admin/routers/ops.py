"""Operations endpoints without auth (for Prometheus and orchestrators): /metrics, /healthz, /readyz.

They expose no patient data and change nothing; bind admin.host to a trusted network.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from dicom_node import metrics
from dicom_node.admin.context import AdminContext, ctx_of
from dicom_node.admin.routers.stats import index_snapshot
from dicom_node.clock import utcnow
from dicom_node.index.models import unserved_jobs
from dicom_node.retention.usage import quota_refusal, recycled_bytes, usage_by_kind

router = APIRouter(tags=["operations"])


def install_snapshot_sources(ctx: AdminContext) -> None:
    """Point the scrape-time metrics at this node's index and storage."""

    def snapshot() -> metrics.IndexSnapshot:
        with ctx.sessions() as session:
            return index_snapshot(session)

    metrics.SNAPSHOT.index = snapshot
    metrics.SNAPSHOT.disk_paths = {"storage": _existing(Path(ctx.live.base.node.storage_dir))}

    def storage() -> metrics.StorageSnapshot:
        with ctx.sessions() as session:
            return metrics.StorageSnapshot(usage_by_kind(session), recycled_bytes(session))

    metrics.STORAGE.source = storage


def _existing(path: Path) -> Path:
    # Before the first instance arrives the storage folder may not exist yet; its volume does.
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@router.get("/metrics", include_in_schema=True)
def prometheus_metrics() -> Response:
    """Prometheus text exposition of srnode's metrics."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


def _check_db(ctx: AdminContext) -> str:
    with ctx.sessions() as session:
        session.execute(text("SELECT 1"))
    return "ok"


def _check_storage(storage: Path) -> str:
    storage.mkdir(parents=True, exist_ok=True)
    probe = storage / f".ready-{uuid.uuid4().hex}"
    with open(probe, "wb") as f:
        f.write(b"ok")
        f.flush()
        os.fsync(f.fileno())
    probe.unlink()
    return "ok"


def _check_disk(storage: Path, min_free_mb: int) -> str:
    free_mb = shutil.disk_usage(_existing(storage)).free // (1024 * 1024)
    if free_mb < min_free_mb:
        raise RuntimeError(f"{free_mb} MB free, below node.min_free_disk_mb={min_free_mb}")
    return f"ok ({free_mb} MB free)"


def _check_quota(ctx: AdminContext) -> str:
    """Fails while the node refuses instances: above retention.quota_mb with nothing to recycle."""
    with ctx.sessions() as session:
        refusal = quota_refusal(session, ctx.live.base.retention)
    if refusal:
        raise RuntimeError(refusal)
    return "ok"


def _check_workers(ctx: AdminContext) -> str:
    """Queued jobs that no live, healthy worker consumes: said here, but readiness does not fail
    on it (the node still stores and serves; an orchestrator would turn the scanners away)."""
    with ctx.sessions() as session:
        problem = unserved_jobs(session, utcnow())
    return f"warning: {problem}" if problem else "ok"


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Readiness: index database reachable, storage writable, disk above node.min_free_disk_mb, not
    refusing for retention.quota_mb (exceeded with nothing eligible to recycle).
    `checks.workers` warns when queued jobs find no healthy worker (not counted against readiness)."""
    ctx = ctx_of(request)
    node = ctx.live.base.node
    storage = Path(node.storage_dir)
    checks: dict[str, Any] = {}
    ready = True
    for name, fn in (
        ("database", lambda: _check_db(ctx)),
        ("storage", lambda: _check_storage(storage)),
        ("disk", lambda: _check_disk(storage, node.min_free_disk_mb)),
        ("quota", lambda: _check_quota(ctx)),
    ):
        try:
            checks[name] = fn()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a named, failed check
            checks[name] = f"failed: {exc}"
            ready = False
    try:
        checks["workers"] = _check_workers(ctx)
    except Exception as exc:  # noqa: BLE001 - the database check already fails readiness
        checks["workers"] = f"unknown: {exc}"
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
