"""Bring an index database to the newest Alembic revision (run by `srnode serve`, workers, tests)."""
from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from dicom_node.index.db import make_engine

# Any constant works; it names "srnode schema migration" among PostgreSQL advisory locks.
_MIGRATION_LOCK_ID = 0x5352_4E4F_4445

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def alembic_config(database_url: str) -> Config:
    """An Alembic Config pointing at srnode's migrations and `database_url`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, engine: Engine | None = None, revision: str = "head") -> None:
    """Apply all pending migrations to the database at `database_url` (idempotent)."""
    cfg = alembic_config(database_url)
    own = engine is None
    engine = engine or make_engine(database_url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # A node and its workers may start together: one migrates, the others wait here and
                # then find nothing to do. (SQLite serialises writers by itself.)
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if own:
            engine.dispose()
