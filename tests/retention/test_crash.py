"""kill -9 of `srnode storage purge` mid-recycle, then the restart's recovery: never an index row
without its file, never an orphan file of a recycled series. One test kills at random moments,
the other exactly between the commit that deletes a series' rows and the unlinks of its files
(the case only the start-up folder sweep can clean up)."""
from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import func, select

from dicom_node.index.models import Instance, Series
from dicom_node.retention.recycler import finish_interrupted
from tests.conftest import REPO_ROOT
from tests.retention.conftest import Archive, orphan_files, rows_without_file

PURGE = [sys.executable, "-m", "srnode", "storage", "purge", "--config"]
# A series marked for recycling whose instance rows are gone: its files are being unlinked now.
IN_UNLINK_WINDOW = ("SELECT 1 FROM series s WHERE s.recycling_at IS NOT NULL AND NOT EXISTS "
                    "(SELECT 1 FROM instance i WHERE i.series_pk = s.id)")


def purge_config(archive: Archive, tmp_path: Path) -> Path:
    """A config on the archive that recycles everything eligible (a quota of 1 KiB, no delay)."""
    config = tmp_path / "srnode.yaml"
    config.write_text(yaml.safe_dump({"node": {"storage_dir": str(archive.storage), "database_url": archive.url},
                                      "retention": {"quota_mb": 0.001, "keep_after_delivery_h": 0}}))
    return config


def test_kill9_mid_recycle_then_restart(tmp_path: Path, ct_slices: list[Path]) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_slices)
    for _ in range(12):
        archive.pipeline(4)
    config = purge_config(archive, tmp_path)
    rng = random.Random(16)
    interrupted = kills = 0
    while True:
        with archive.factory() as s:
            left = s.scalar(select(func.count()).select_from(Instance))
        if not left or kills >= 8:
            break
        proc = subprocess.Popen([*PURGE, str(config)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # Wait until it recycles, then kill it a random moment later (a real SIGKILL, no hook).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with archive.factory() as s:
                if s.scalar(select(func.count()).select_from(Instance)) < left:
                    break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        proc.kill()
        proc.wait(timeout=10)
        kills += 1
        with archive.factory() as s:
            interrupted += bool(s.scalar(select(func.count()).select_from(Series)
                                         .where(Series.recycling_at.is_not(None))))
        assert [p for p in archive.problems() if p.startswith("row without file")] == []
        finish_interrupted(archive.factory, archive.storage, keep_job_history=True)  # what a node start does
        assert archive.problems() == [], f"after kill {kills}"
    assert kills >= 2 and interrupted >= 1, f"no kill landed mid-recycle ({kills} kills): the test proved nothing"
    archive.close()


def kill_in_unlink_window(proc: subprocess.Popen[bytes], db: Path, timeout_s: float = 60) -> bool:
    """SIGKILL `proc` the moment the index shows a series in its unlink window; False if it never did."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if con.execute(IN_UNLINK_WINDOW).fetchone():
                proc.kill()
                return True
        return False
    finally:
        proc.kill()
        proc.wait(timeout=10)
        con.close()


def test_kill9_between_row_delete_and_unlinks_needs_the_sweep(tmp_path: Path, ct_slices: list[Path]) -> None:
    # Derived series of 150 files each: their unlinks take long enough for the test to see the window.
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "storage", ct_slices * 19)
    for _ in range(3):
        src = archive.series(1)
        job = archive.job(src)
        archive.outbox(archive.series(150, derived_from_job=job), job=job)
    config = purge_config(archive, tmp_path)
    landed = 0
    for attempt in range(3):
        proc = subprocess.Popen([*PURGE, str(config)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if not kill_in_unlink_window(proc, tmp_path / "index.db"):
            break
        assert rows_without_file(archive.factory, archive.storage) == [], f"attempt {attempt}"
        orphans = orphan_files(archive.factory, archive.storage)
        landed += bool(orphans)
        finish_interrupted(archive.factory, archive.storage, keep_job_history=True)  # what a node start does
        assert archive.problems() == [], f"orphans before recovery: {len(orphans)}; after attempt {attempt}"
        if landed:
            break
    archive.close()
    assert landed, "no kill landed between the rows' delete and the unlinks: the test proved nothing"
