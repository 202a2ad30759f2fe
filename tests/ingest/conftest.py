"""Fixtures for the ingest tests: the DICOM node tests' databases and in-process nodes."""
from __future__ import annotations

from tests.dicom_node.conftest import database_url, pg_url, sqlite_url, start_node

__all__ = ["database_url", "pg_url", "sqlite_url", "start_node"]
