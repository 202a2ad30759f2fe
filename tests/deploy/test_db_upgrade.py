"""`srnode db upgrade` (the migration step of compose, Kubernetes and systemd) on real PostgreSQL."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from dicom_node.index.db import make_engine
from srnode.cli import main
from tests.admin.conftest import postgres_database


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "srnode", "db", "upgrade", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def test_db_upgrade_postgres_idempotent(tmp_path: Path) -> None:
    with postgres_database() as url:
        config = tmp_path / "srnode.yaml"
        config.write_text(f"node:\n  database_url: {url}\n")
        first = _run(config)
        assert first.returncode == 0, first.stderr
        assert main(["db", "upgrade", "--config", str(config)]) == 0  # nothing left to do, no error
        engine = make_engine(url)
        try:
            tables = set(inspect(engine).get_table_names())
            with engine.connect() as conn:
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        finally:
            engine.dispose()
    assert {"series", "job", "outbox", "audit", "config_override"} <= tables
    assert version


def test_db_upgrade_bad_config_names_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "srnode.yaml"
    config.write_text("node:\n  port: 99999\n")
    assert main(["db", "upgrade", "--config", str(config)]) == 1
    assert "node.port" in capsys.readouterr().err


def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    # A node and its workers all run migrations on start; on PostgreSQL they must not race.
    with postgres_database() as url:
        config = tmp_path / "srnode.yaml"
        config.write_text(f"node:\n  database_url: {url}\n")
        procs = [subprocess.Popen([sys.executable, "-m", "srnode", "db", "upgrade", "--config", str(config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        results = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                pytest.fail("concurrent migrations deadlocked")
            results.append((proc.returncode, err[-500:]))
    assert all(code == 0 for code, _ in results), results
