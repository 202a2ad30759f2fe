"""Admin API (FastAPI) and the web console: peers, routing, models, jobs, series, audit, metrics.

`create_app(live, sessions, ...)` builds the app; `service.AdminService` runs it with uvicorn in a
thread beside the DICOM listener. Every change goes through `dicom_node.index.live_config.LiveConfig.set_section`
(validated like the YAML file, persisted, audited) or a committed Job-row state change.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `srnode db upgrade` and the CLI's registration import this package and must not pull
    # in FastAPI, the routers and (through the reader study) torch.
    if name == "create_app":
        from dicom_node.admin.app import create_app

        return create_app
    raise AttributeError(name)
