"""Issue 16's acceptance check: `srnode serve` with a 12 MB quota receives, upscales (bicubic x2)
and delivers ten small real CT series one after another, and recycles as it goes: it stays under
its quota (but for the transient of the series in flight), delivers every derived slice exactly
once, and its index never points at a missing file.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_node.retention import MIB
from dicom_node.retention.usage import usage_by_kind
from tests.faults.conftest import ct_series, make_run  # noqa: F401 - fixtures
from tests.faults.harness import Index, Run, expected_derived, wait_until
from tests.retention.conftest import fresh_series, orphan_files, rows_without_file

pytestmark = [pytest.mark.integration]

QUOTA_MB = 12
SERIES, SLICES, SCALE = 10, 3, 2  # x2: a 1024² derived slice is 2 MiB (x4's 8 MiB would not fit)


def used_bytes(index: Index) -> int:
    with index.factory() as s:
        return sum(usage_by_kind(s).values())


class Watcher:
    """Samples the index all along (every 50 ms): the highest usage, and rows without their file."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.peak = 0
        self.missing: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, used_bytes(self.index))
            self.missing += rows_without_file(self.index.factory, self.index.storage_dir)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def write_series(slices: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True)
    files = []
    for k, ds in enumerate(fresh_series(slices)):
        ds.save_as(out / f"{k}.dcm", enforce_file_format=True)
        files.append(out / f"{k}.dcm")
    return files


def test_ten_series_under_a_12mb_quota(make_run: Callable[..., Run], ct_series: list[Path],  # noqa: F811
                                       tmp_path: Path) -> None:
    run = make_run(models={"bicubic": {"arch": "bicubic", "scale": SCALE}},
                   series={"stable_after_s": 1.5, "check_interval_s": 0.25},
                   retention={"quota_mb": QUOTA_MB, "keep_after_delivery_h": 0, "check_interval_s": 0.5})
    watcher = Watcher(run.index)
    expected: set[str] = set()
    after_each: list[float] = []
    try:
        for i in range(SERIES):
            files = write_series(ct_series[:SLICES], tmp_path / "sent" / str(i))
            assert len(run.send(files)) == SLICES, f"series {i} not acknowledged:\n{run.node.log_tail()}"
            expected |= expected_derived(files, SCALE)
            wait_until(lambda want=frozenset(expected): want <= set(run.dest.received()), 60, f"series {i} delivered",
                       every_s=0.2)
            # Recycling runs every 0.5 s: the series just delivered may stand above the quota until then.
            wait_until(lambda: used_bytes(run.index) <= QUOTA_MB * MIB, 10, f"usage back under the quota ({i})")
            after_each.append(used_bytes(run.index) / MIB)
        wait_until(run.index.settled, 30, "an idle node", every_s=0.2)
    finally:
        watcher.stop()
    received = run.dest.received()
    series_mib = (sum(f.stat().st_size for f in files) * (1 + SCALE * SCALE)) / MIB
    context = f"usage after each series (MiB): {after_each}\nnode log tail:\n{run.node.log_tail()}"
    assert set(received) == expected and len(expected) == SERIES * SLICES, context
    assert all(n == 1 for n in received.values()), f"duplicates: {received}; {context}"
    # The transient: one series (its originals and derived slices) on top of a full quota.
    assert watcher.peak / MIB <= QUOTA_MB + series_mib, f"peak {watcher.peak / MIB:.1f} MiB; {context}"
    assert watcher.missing == [] and run.index.problems() == [], context
    assert orphan_files(run.index.factory, run.index.storage_dir) == [], context
    assert "recycled series" in run.node.log_text(), "nothing was recycled: the test proved nothing"
    print(f"usage after each series (MiB): {[round(u, 1) for u in after_each]}; peak {watcher.peak / MIB:.1f} MiB;"
          f" one series {series_mib:.1f} MiB")
