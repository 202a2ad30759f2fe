"""Upscaling on demand, end to end: DCMTK finds the virtual series, moves it, and gets it again.

The node runs with the real pipeline service (routing, dispatcher, embedded worker, the
pipeline's OnDemandProvider) and a `bicubic` x2 rule marked `on_demand: true`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from config.loader import parse_config
from dicom_node.index.models import Job, Series, SeriesState
from dicom_node.server import NodeServer
from dicom_node.wiring import build_node
from tests.conftest import free_port
from tests.qr.conftest import NODE_AE, SCU_AE, run

pytestmark = pytest.mark.integration


@pytest.fixture
def on_demand_node(tmp_path: Path, ct_dirs: list[Path]) -> Iterator[tuple[NodeServer, int, list[Path]]]:
    slices = sorted(next(d for d in ct_dirs if d.name.startswith("lung-pet-ct-dx")).glob("*.dcm"))[:4]
    scu_port = free_port()
    cfg = parse_config({
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port(), "storage_dir": str(tmp_path / "st"),
                 "database_url": f"sqlite:///{tmp_path / 'index.db'}", "min_free_disk_mb": 0,
                 "shutdown_grace_s": 2},
        "peers": {"scu": {"ae_title": SCU_AE, "host": "127.0.0.1", "port": scu_port}},
        "series": {"stable_after_s": 1, "check_interval_s": 0.25},
        "models": {"bicubic": {"arch": "bicubic", "scale": 2}},
        "routing": [{"match": {"modality": "CT"}, "model": "bicubic", "on_demand": True}],
        "worker": {"device": "cpu"}, "admin": {"enabled": False},
    }, environ={})
    node = build_node(cfg)  # default services: the pipeline installs its on-demand provider
    node.start()
    try:
        yield node, scu_port, slices
    finally:
        node.stop()


def test_on_demand_series_found_moved_and_got(on_demand_node: tuple[NodeServer, int, list[Path]],
                                              tmp_path: Path) -> None:
    node, scu_port, slices = on_demand_node
    res = run(["storescu", "-aet", SCU_AE, "-aec", NODE_AE, "127.0.0.1", str(node.port), *map(str, slices)])
    assert res.returncode == 0, res.stdout + res.stderr
    source = dcmread(slices[0], stop_before_pixels=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until routed (on demand: routed, but no job)
        with node.session_factory() as s:
            row = s.query(Series).filter(Series.series_uid == str(source.SeriesInstanceUID)).one_or_none()
            if row is not None and row.state == SeriesState.routed:
                break
        time.sleep(0.2)
    with node.session_factory() as s:
        assert s.query(Job).count() == 0

    found_dir = tmp_path / "find"
    found_dir.mkdir()
    res = run(["findscu", "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-X", "-od", str(found_dir),
               "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={source.StudyInstanceUID}",
               "-k", "SeriesInstanceUID", "-k", "SeriesDescription", "-k", "NumberOfSeriesRelatedInstances",
               "127.0.0.1", str(node.port)])
    assert res.returncode == 0, res.stdout + res.stderr
    answers = {str(ds.SeriesInstanceUID): ds for ds in map(dcmread, sorted(found_dir.glob("rsp*.dcm")))}
    assert len(answers) == 2
    (virtual_uid,) = set(answers) - {str(source.SeriesInstanceUID)}
    assert answers[virtual_uid].SeriesDescription.startswith("SRx2 bicubic: ")
    assert answers[virtual_uid].NumberOfSeriesRelatedInstances == len(slices)

    moved = tmp_path / "moved"
    moved.mkdir()
    res = run(["movescu", "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-aem", SCU_AE, "+P", str(scu_port),
               "-od", str(moved), "-k", "QueryRetrieveLevel=SERIES",
               "-k", f"StudyInstanceUID={source.StudyInstanceUID}", "-k", f"SeriesInstanceUID={virtual_uid}",
               "127.0.0.1", str(node.port)], timeout=300)
    assert res.returncode == 0 and "Failed" not in res.stderr, res.stdout + res.stderr
    received = [dcmread(p) for p in sorted(moved.iterdir())]
    assert len(received) == len(slices)
    for ds in received:  # upscaled x2, marked derived, in the virtual series
        assert str(ds.SeriesInstanceUID) == virtual_uid
        assert (ds.Rows, ds.Columns) == (2 * source.Rows, 2 * source.Columns)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]

    got = tmp_path / "got"
    got.mkdir()
    res = run(["getscu", "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-od", str(got), "-k", "QueryRetrieveLevel=SERIES",
               "-k", f"StudyInstanceUID={source.StudyInstanceUID}", "-k", f"SeriesInstanceUID={virtual_uid}",
               "127.0.0.1", str(node.port)], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in moved.iterdir())
    with node.session_factory() as s:
        assert s.query(Job).count() == 1  # the second retrieve came from the local store
