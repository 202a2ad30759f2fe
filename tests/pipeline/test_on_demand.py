"""On-demand rules: nothing runs at arrival; query/retrieve's provider lists, then makes, the series."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from config.loader import parse_config
from dicom_node.index.models import Job, Series, SeriesState
from dicom_node.pipeline.service import PipelineService
from dicom_node.qr.on_demand import NO_ON_DEMAND, OnDemandError
from dicom_node.wiring import build_node
from tests.conftest import free_port
from tests.pipeline.helpers import expected_derived_uid

pytestmark = pytest.mark.integration


def test_on_demand_series_is_listed_then_materialised(tmp_path: Path, ct_slices: list[Path]) -> None:
    port = free_port()
    cfg = parse_config({
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": port, "storage_dir": str(tmp_path / "storage"),
                 "database_url": f"sqlite:///{tmp_path / 'index.db'}", "require_known_callers": False,
                 "min_free_disk_mb": 0, "shutdown_grace_s": 2},
        "series": {"stable_after_s": 1, "check_interval_s": 0.25},
        "models": {"bicubic": {"arch": "bicubic", "scale": 2}},
        "routing": [{"match": {"modality": "CT"}, "model": "bicubic", "on_demand": True}],
        "worker": {"device": "cpu", "heartbeat_timeout_s": 10}, "admin": {"enabled": False},
    }, environ={})
    node = build_node(cfg)
    node.start()
    try:
        subprocess.run(["storescu", "-aec", "SRNODE", "-aet", "SCANNER", "127.0.0.1", str(port),
                        *map(str, ct_slices)], check=True, capture_output=True, timeout=60)
        source_uid = pydicom.dcmread(ct_slices[0], stop_before_pixels=True).SeriesInstanceUID
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with node.session_factory() as s:
                series = s.query(Series).filter(Series.series_uid == source_uid).one_or_none()
                if series is not None and series.state == SeriesState.routed:
                    break
            time.sleep(0.2)
        with node.session_factory() as s:
            assert s.query(Job).count() == 0  # on demand: nothing at arrival
            provider = node.context.on_demand  # what the node's Q/R and DICOMweb ask
            (pipeline,) = [svc for svc in node.services if isinstance(svc, PipelineService)]
            assert provider.provider is pipeline.on_demand  # installed by the pipeline service
            (virtual,) = provider.virtual_series(s, [source_uid])
            assert virtual.series_uid == expected_derived_uid(ct_slices[0])
            assert virtual.expected_instances == len(ct_slices)
            assert virtual.series_description.startswith("SRx2 bicubic: ")
            assert provider.lookup(s, virtual.series_uid) == virtual
            assert provider.lookup(s, "1.2.3.4") is None
        produced = list(provider.materialise(virtual.series_uid))
        assert len(produced) == len(ct_slices) and all(p.path.exists() for p in produced)
        assert {pydicom.dcmread(p.path).SeriesInstanceUID for p in produced} == {virtual.series_uid}
        with pytest.raises(OnDemandError):
            list(provider.materialise("1.2.3.4"))
    finally:
        node.stop()
    assert node.context.on_demand.provider is NO_ON_DEMAND  # the stopped node's provider is gone
