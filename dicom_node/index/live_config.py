"""The configuration in force: the YAML file plus admin changes stored in the index database.

Routing, peers and models can change at run time (admin API) without a restart. Code that acts on
them (routing a stable series, checking a calling AE, resolving a model, a C-MOVE destination)
asks `LiveConfig.current()` each time instead of keeping the startup `SRNodeConfig`.

The file stays the one source of truth for everything not overridden, and overrides are never
silent: each process logs those in force when it first reads them, `srnode config overrides`
lists and clears them, and the file's value of a section is kept when an override is made, so
that a file edited underneath an override is reported (docs/admin.md, "File and overrides").
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config.loader import ConfigError, parse_config
from config.schema import SRNodeConfig
from dicom_node.index.audit import audit_change
from dicom_node.index.models import ConfigOverride, NodeSetting

log = logging.getLogger(__name__)

# Sections an admin may change at run time; node/broker settings need a restart by nature.
MUTABLE_SECTIONS = ("peers", "models", "routing", "output", "series")

# node_setting key holding a section's file value as it was when its override was made.
_FILE_VALUE_KEY = "config_file_value.{}"


@dataclass(frozen=True)
class Override:
    """The override in force for one section, and what the file says about that section."""

    key: str
    actor: str
    created_at: datetime | None
    value: Any
    file_value: Any  # the file's value now (not in force while this override is)
    file_value_then: Any  # the file's value when the override was made; None: not recorded

    @property
    def file_changed(self) -> bool:
        """True when the file's value changed after the override was made (the edit has no effect)."""
        return self.file_value_then is not None and self.file_value_then != self.file_value

    def describe(self) -> str:
        """One log/CLI line without the value (who and when identify it; values can be long)."""
        at = self.created_at.isoformat(timespec="seconds") if self.created_at else "?"
        line = f"{self.key}: override by {self.actor or '?'} at {at} in force instead of the file's value"
        return line + ("; the file's value changed after the override was made" if self.file_changed else "")


def apply_overrides(base: SRNodeConfig, overrides: dict[str, Any]) -> SRNodeConfig:
    """Validate `overrides` (section → value) on top of `base`; raises ConfigError."""
    unknown = sorted(set(overrides) - set(MUTABLE_SECTIONS))
    if unknown:
        raise ConfigError(f"sections {unknown} cannot be changed at run time", unknown)
    data = base.model_dump(mode="json")
    data.update(overrides)
    # Paths in the base were already made absolute, so no base_dir is needed; env overrides
    # were applied to the base at load time and must not re-apply here.
    return parse_config(data, environ={})


def read_overrides(sessions: sessionmaker[Session], base: SRNodeConfig) -> list[Override]:
    """The override in force per section (the newest row), in MUTABLE_SECTIONS order."""
    with sessions() as session:
        rows = session.execute(select(ConfigOverride).order_by(ConfigOverride.id)).scalars().all()
        newest = {row.section: row for row in rows}
        keys = [_FILE_VALUE_KEY.format(s) for s in newest]
        then = {n.key: n.value for n in session.execute(
            select(NodeSetting).where(NodeSetting.key.in_(keys))).scalars()}
    file_data = base.model_dump(mode="json")
    out = []
    for section in (s for s in MUTABLE_SECTIONS if s in newest):
        row = newest[section]
        recorded = then.get(_FILE_VALUE_KEY.format(section))
        # SQLite hands back naive datetimes; they are UTC (dicom_node.clock.utcnow).
        at = row.created_at.replace(tzinfo=UTC) if row.created_at and not row.created_at.tzinfo \
            else row.created_at
        out.append(Override(key=section, actor=row.actor, created_at=at,
                            value=json.loads(row.value_json), file_value=file_data[section],
                            file_value_then=json.loads(recorded) if recorded else None))
    return out


def clear_overrides(sessions: sessionmaker[Session], base: SRNodeConfig, keys: list[str] | None,
                    actor: str) -> list[Override]:
    """Delete the overrides of `keys` (None: all), so that the file's values are in force; audited.

    Refused (ConfigError, nothing deleted) when the overrides left would not validate with the
    file, e.g. routing overridden to send to a peer that only the peers override adds.
    """
    unknown = sorted(set(keys or []) - set(MUTABLE_SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a section that can be overridden ({', '.join(MUTABLE_SECTIONS)})",
                          unknown)
    in_force = read_overrides(sessions, base)
    cleared = [o for o in in_force if keys is None or o.key in keys]
    apply_overrides(base, {o.key: o.value for o in in_force if o not in cleared})
    with sessions() as session, session.begin():
        for o in cleared:
            # All rows of the section: deleting only the newest would put an older one in force.
            session.execute(delete(ConfigOverride).where(ConfigOverride.section == o.key))
            session.execute(delete(NodeSetting).where(NodeSetting.key == _FILE_VALUE_KEY.format(o.key)))
            audit_change(session, actor, f"config.revert.{o.key}", o.value, o.file_value, "revert to file")
    return cleared


class LiveConfig:
    """The YAML config with the newest override per section applied; re-read at most every `ttl_s`."""

    def __init__(self, base: SRNodeConfig, sessions: sessionmaker[Session], ttl_s: float = 1.0) -> None:
        self._base = base
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._changes = 0  # local changes committed (a read that overlapped one does not start a ttl)
        self._cached: SRNodeConfig = base
        self._cached_marker: Any = _UNREAD
        self._checked_at = 0.0
        self._logged = False

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
        with self._lock:
            if time.monotonic() - self._checked_at < self._ttl_s:
                return self._cached
        # One thread reads; the others wait for its answer. Answering them with the cache being
        # replaced lost updates: the routing page's two parallel GETs after a save got one fresh
        # and one stale reply (issue 17).
        with self._refresh_lock:
            with self._lock:
                if time.monotonic() - self._checked_at < self._ttl_s:
                    return self._cached
                started, changes = time.monotonic(), self._changes
            cfg = self._read()
            with self._lock:
                if self._changes == changes:  # a change committed meanwhile is read on the next call
                    self._checked_at = started
        return cfg

    def _read(self) -> SRNodeConfig:
        """The YAML with the newest override per section, from the database (or the last known)."""
        try:
            with self._sessions() as session:
                # Count and newest time too: rows deleted by `config overrides --clear` (another
                # process) change the count, and SQLite may reuse a deleted row's id.
                marker = tuple(session.execute(select(
                    func.count(ConfigOverride.id), func.max(ConfigOverride.id),
                    func.max(ConfigOverride.created_at))).one())
                if marker == self._cached_marker:
                    return self._cached
                rows = session.execute(select(ConfigOverride).order_by(ConfigOverride.id)).scalars().all()
        except SQLAlchemyError as exc:
            # Before the first migration, or while the database is away: the last known
            # configuration stays in force (checked again after ttl_s).
            log.debug("configuration overrides not readable (%s); keeping the last known", type(exc).__name__)
            return self._cached
        newest = {row.section: json.loads(row.value_json) for row in rows}
        try:
            cfg = self.with_overrides(newest)
        except ConfigError as exc:
            # The file changed so that an override no longer fits (e.g. a peer it sends to was
            # removed): keep running on the last valid configuration and say so once.
            log.error("configuration overrides %s do not validate with the file (%s); the last valid "
                      "configuration stays in force: see `srnode config overrides`",
                      ",".join(sorted(newest)), ",".join(exc.keys) or "-")
            cfg = self._cached
        with self._lock:
            self._cached, self._cached_marker = cfg, marker
            first, self._logged = not self._logged, True
        if first:
            self.log_overrides()
        return cfg

    def with_overrides(self, overrides: dict[str, Any]) -> SRNodeConfig:
        """Validate `overrides` (section → value) on top of the base config; raises ConfigError."""
        return apply_overrides(self._base, overrides)

    def overrides(self) -> list[Override]:
        """The overrides in force, one per section that has one."""
        return read_overrides(self._sessions, self._base)

    def log_overrides(self) -> None:
        """One line per override in force (called on the first read: a process says what it runs with)."""
        for override in self.overrides():
            (log.warning if override.file_changed else log.info)("configuration %s", override.describe())

    def clear(self, keys: list[str] | None, actor: str) -> list[Override]:
        """Revert `keys` (None: all) to the file's values; see clear_overrides."""
        cleared = clear_overrides(self._sessions, self._base, keys, actor)
        with self._lock:
            self._checked_at, self._changes = 0.0, self._changes + 1
        return cleared

    def set_section(self, section: str, value: Any, actor: str, how: str = "section") -> SRNodeConfig:
        """Validate, persist and audit one section change (`how` it was made, e.g. "json" or
        "per-modality", goes into the audit row); returns the new config."""
        current = self.current().model_dump(mode="json")
        overrides = {k: current[k] for k in MUTABLE_SECTIONS}
        overrides[section] = value
        cfg = self.with_overrides(overrides)  # raises before anything is written
        with self._sessions() as session, session.begin():
            session.add(ConfigOverride(section=section, value_json=json.dumps(value), actor=actor))
            # What the file said at this moment: a later edit of the file is then reported.
            file_value = json.dumps(self._base.model_dump(mode="json")[section])
            session.merge(NodeSetting(key=_FILE_VALUE_KEY.format(section), value=file_value))
            # After as validated (defaults filled in), so that only what really changed is recorded.
            audit_change(session, actor, f"config.set.{section}", current[section],
                         cfg.model_dump(mode="json")[section], how)
        with self._lock:
            self._checked_at, self._changes = 0.0, self._changes + 1
        return cfg


_UNREAD = object()  # no read of the overrides succeeded yet


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
