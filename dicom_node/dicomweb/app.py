"""The DICOMweb application mounted under the admin app at /dicomweb (docs/dicomweb.md).

A sub-application so that its CORS policy (dicomweb.cors_origins, for a viewer served from another
origin) and its error answers stay its own; tokens and roles are the admin API's, whose checks the
admin app hands in (`TokenChecks`) when it mounts this one.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.cors import CORSMiddleware

from dicom_node.dicomweb import qido, stow, wado
from dicom_node.dicomweb.context import (
    DicomwebContext,
    Refused,
    TokenChecks,
    one_log_line,
)
from dicom_node.group_commit import GroupCommitter
from dicom_node.index.live_config import LiveConfig
from dicom_node.qr.on_demand import NO_ON_DEMAND, OnDemandProvider

PREFIX = "/dicomweb"


def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    one_log_line(request, exc.status, exc.logged)
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)


def create_dicomweb_app(live: LiveConfig, sessions: sessionmaker[Session], tokens: TokenChecks,
                        provider: OnDemandProvider = NO_ON_DEMAND,
                        committer: GroupCommitter | None = None) -> FastAPI:
    """STOW-RS, QIDO-RS and WADO-RS over the node's index and storage, behind `tokens`' checks."""
    app = FastAPI(title="srnode DICOMweb", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.live = live  # the admin app's token checks read admin.tokens from here
    app.state.token_checks = tokens
    app.state.dicomweb = DicomwebContext(live, sessions, provider, committer)
    app.add_exception_handler(Refused, _refused)
    # Order matters: /studies/{study}/series (QIDO) before /studies/{study}/series/{series} (WADO).
    for module in (stow, qido, wado):
        app.include_router(module.router)
    origins = live.base.dicomweb.cors_origins
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "Accept"],
                           expose_headers=["Warning", "Content-Location"], max_age=600)
    return app


def mount_dicomweb(app: FastAPI, live: LiveConfig, sessions: sessionmaker[Session], tokens: TokenChecks,
                   provider: OnDemandProvider = NO_ON_DEMAND, committer: GroupCommitter | None = None) -> None:
    """Mount the DICOMweb service at /dicomweb of the admin app, unless dicomweb.enabled is false;
    `provider` and `committer`: the node's (NodeContext.on_demand, NodeContext.committer)."""
    if live.base.dicomweb.enabled:
        app.mount(PREFIX, create_dicomweb_app(live, sessions, tokens, provider, committer), name="dicomweb")
