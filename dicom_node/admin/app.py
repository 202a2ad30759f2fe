"""`create_app`: the FastAPI application (admin API under /api, metrics and probes, the console at /)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from config.loader import ConfigError
from dicom_node.admin.auth import require_read, require_store
from dicom_node.admin.context import AdminContext, EnqueueJob
from dicom_node.admin.ohif import mount_ohif
from dicom_node.admin.routers import (
    audit,
    config_overrides,
    jobs,
    models,
    ops,
    peers,
    reader_study,
    routing,
    series,
    stats,
    storage,
    viewer,
    workers,
)
from dicom_node.dicomweb.app import mount_dicomweb
from dicom_node.dicomweb.context import TokenChecks
from dicom_node.group_commit import GroupCommitter
from dicom_node.index.live_config import LiveConfig
from dicom_node.qr.on_demand import NO_ON_DEMAND, OnDemandProvider

log = logging.getLogger("srnode.admin")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


# Cross-section checks of the schema (model validators) report at the top level with the real key
# at the start of the message, e.g. "Value error, routing.0.destinations: 'x' is not a key of peers".
_TOP_LEVEL_KEY = re.compile(r"\(top level\): (?:Value error, )?([A-Za-z_][\w.]*): ")


def _config_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConfigError)
    keys = [k for k in exc.keys if k != "(top level)"] + _TOP_LEVEL_KEY.findall(str(exc))
    log.info("admin change rejected: keys %s", ",".join(keys) or "-")
    return JSONResponse(status_code=422, content={"detail": str(exc), "keys": keys or exc.keys})


def _request_error(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own checks (query parameters, JSON bodies) answer like config errors: with keys.
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    keys = [".".join(str(p) for p in err.get("loc", ())) for err in errors]
    log.info("admin request rejected: keys %s", ",".join(keys) or "-")
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors), "keys": keys})


def create_app(
    live: LiveConfig,
    sessions: sessionmaker[Session],
    enqueue_job: EnqueueJob | None = None,
    web_dir: Path | None = WEB_DIR,
    on_demand: OnDemandProvider = NO_ON_DEMAND,
    committer: GroupCommitter | None = None,
) -> FastAPI:
    """Build the admin app over the live config and the index; `enqueue_job(job_id)` re-queues retries;
    `on_demand` and `committer`: the node's (NodeContext.on_demand, .committer), for /dicomweb."""
    app = FastAPI(
        title="srnode admin API",
        version="1",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        description="Peers, routing, models, jobs, series and audit of an srnode DICOM SR node. "
        "Authenticate with `Authorization: Bearer <token>` (admin.tokens in the config).",
    )
    app.state.live = live
    # OHIF at /ohif, reading /dicomweb; its routes come before the console's "/".
    ohif_served = mount_ohif(app, Path(live.base.dicomweb.ohif_dir))
    app.state.ctx = AdminContext(live=live, sessions=sessions, enqueue_job=enqueue_job, ohif_served=ohif_served)
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    for module in (peers, routing, config_overrides, models, jobs, series, audit, stats, viewer, reader_study, workers,
                   storage):
        app.include_router(module.router, prefix="/api")
    app.include_router(ops.router)
    ops.install_snapshot_sources(app.state.ctx)
    # STOW/QIDO/WADO-RS at /dicomweb, before the console's "/"; `read` tokens search and retrieve.
    mount_dicomweb(app, live, sessions, TokenChecks(read=require_read, store=require_store), on_demand,
                   committer)
    if web_dir is not None and web_dir.is_dir():
        icon = web_dir / "favicon.svg"
        # Pages without the <link rel="icon"> (and browsers that ask anyway) request /favicon.ico.
        app.add_api_route("/favicon.ico", lambda: FileResponse(icon, media_type="image/svg+xml"),
                          include_in_schema=False)
        app.mount("/", StaticFiles(directory=web_dir, html=True), name="console")
    return app
