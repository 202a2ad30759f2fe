"""What the admin routes need from the running node, held on `app.state.ctx`."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from config.loader import ConfigError
from config.schema import SRNodeConfig
from dicom_node.admin.auth import Principal
from dicom_node.index.live_config import LiveConfig

log = logging.getLogger("srnode.admin")

# Re-enqueue a job row that the API has set back to `queued` (the pipeline's public function).
EnqueueJob = Callable[[int], Any]


@dataclass
class AdminContext:
    live: LiveConfig
    sessions: sessionmaker[Session]
    enqueue_job: EnqueueJob | None = None
    # OHIF is served at /ohif (dicom_node/admin/ohif.py): the series page links to it.
    ohif_served: bool = False
    # Reader-study candidate computations running in this process, by study id (routers/reader_study.py).
    candidate_threads: dict[int, threading.Thread] = field(default_factory=dict)

    def candidate(self, section: str, value: Any) -> SRNodeConfig:
        """The config that changing `section` to `value` would give (validated, nothing written)."""
        from dicom_node.index.live_config import MUTABLE_SECTIONS

        data = self.live.current().model_dump(mode="json")
        return self.live.with_overrides({**{k: data[k] for k in MUTABLE_SECTIONS}, section: value})

    def change_section(self, section: str, value: Any, who: Principal, how: str = "section") -> SRNodeConfig:
        """Validate, persist and audit one config section change (raises ConfigError → 422)."""
        cfg = self.live.set_section(section, value, who.actor, how)
        log.info("admin change: section %s by %s", section, who.actor)
        return cfg


def ctx_of(request: Request) -> AdminContext:
    """The AdminContext of the app serving `request`."""
    return request.app.state.ctx


def bad_key(key: str, message: str) -> ConfigError:
    """A validation error the API found itself (beyond the schema), naming the offending key."""
    return ConfigError(f"{key}: {message}", [key])
