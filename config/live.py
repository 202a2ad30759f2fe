"""The configuration in force: the YAML file plus admin changes stored in the index database.

Routing, peers and models can change at run time (admin API) without a restart. Code that acts on
them (routing a stable series, checking a calling AE, resolving a model, a C-MOVE destination)
asks `LiveConfig.current()` each time instead of keeping the startup `SRNodeConfig`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config.loader import ConfigError, parse_config
from config.schema import SRNodeConfig

log = logging.getLogger(__name__)

# Sections an admin may change at run time; node/broker settings need a restart by nature.
MUTABLE_SECTIONS = ("peers", "models", "routing", "output", "series")


class LiveConfig:
    """The YAML config with the newest override per section applied; re-read at most every `ttl_s`."""

    def __init__(self, base: SRNodeConfig, sessions: sessionmaker[Session], ttl_s: float = 1.0) -> None:
        self._base = base
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: SRNodeConfig = base
        self._cached_marker: Any = None
        self._checked_at = 0.0

    @property
    def base(self) -> SRNodeConfig:
        return self._base

    def view(self) -> SRNodeConfig:
        """A read-only stand-in for SRNodeConfig whose every attribute comes from `current()`.

        Long-lived components (the association checks, the pipeline's routing, the sender's peer
        lookup, a worker's model registry) keep a config for their whole life; handing them this
        view makes them see admin changes on their next action without being rewritten.
        """
        return cast(SRNodeConfig, _LiveView(self))

    def current(self) -> SRNodeConfig:
        """The configuration in force now."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at < self._ttl_s:
                return self._cached
            self._checked_at = now
        from dicom_node.index.models import ConfigOverride

        try:
            with self._sessions() as session:
                marker = session.execute(select(func.max(ConfigOverride.id))).scalar()
                if marker == self._cached_marker:
                    return self._cached
                rows = session.execute(select(ConfigOverride).order_by(ConfigOverride.id)).scalars().all()
        except SQLAlchemyError as exc:
            # Before the first migration, or while the database is away: the last known
            # configuration stays in force (checked again after ttl_s).
            log.debug("configuration overrides not readable (%s); keeping the last known", type(exc).__name__)
            return self._cached
        newest: dict[str, Any] = {}
        for row in rows:
            newest[row.section] = json.loads(row.value_json)
        cfg = self.with_overrides(newest)
        with self._lock:
            self._cached, self._cached_marker = cfg, marker
        return cfg

    def with_overrides(self, overrides: dict[str, Any]) -> SRNodeConfig:
        """Validate `overrides` (section → value) on top of the base config; raises ConfigError."""
        unknown = sorted(set(overrides) - set(MUTABLE_SECTIONS))
        if unknown:
            raise ConfigError(f"sections {unknown} cannot be changed at run time", unknown)
        data = self._base.model_dump(mode="json")
        data.update(overrides)
        # Paths in the base were already made absolute, so no base_dir is needed; env overrides
        # were applied to the base at load time and must not re-apply here.
        return parse_config(data, environ={})

    def set_section(self, section: str, value: Any, actor: str) -> SRNodeConfig:
        """Validate and persist one section change (audited by the caller); returns the new config."""
        from dicom_node.index.models import Audit, ConfigOverride

        current = self.current().model_dump(mode="json")
        overrides = {k: current[k] for k in MUTABLE_SECTIONS}
        overrides[section] = value
        cfg = self.with_overrides(overrides)  # raises before anything is written
        with self._sessions() as session, session.begin():
            session.add(ConfigOverride(section=section, value_json=json.dumps(value), actor=actor))
            session.add(Audit(actor=actor, action=f"config.set.{section}", detail=json.dumps(value)[:4000]))
        with self._lock:
            self._checked_at = 0.0
        return cfg


class _LiveView:
    """See LiveConfig.view(): attribute reads answer from the configuration in force now."""

    __slots__ = ("_live",)

    def __init__(self, live: LiveConfig) -> None:
        object.__setattr__(self, "_live", live)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live.current(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the live configuration is read-only; change it with LiveConfig.set_section")

    def __repr__(self) -> str:
        return f"<live view of {self._live.current()!r}>"
