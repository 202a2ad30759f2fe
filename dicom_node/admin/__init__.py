"""Admin API (FastAPI) and the web console: peers, routing, models, jobs, series, audit, metrics.

`create_app(live, sessions, ...)` builds the app; `service.AdminService` runs it with uvicorn in a
thread beside the DICOM listener. Every change goes through `config.live.LiveConfig.set_section`
(validated like the YAML file, persisted, audited) or a committed Job-row state change.
"""
from dicom_node.admin.app import create_app

__all__ = ["create_app"]
