"""On-demand upscaling through DICOMweb, parity with C-FIND/C-MOVE: QIDO-RS lists the virtual
series an `on_demand` rule would make, and a WADO-RS retrieve of it starts the job and streams
the derived instances."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.index.models import Job, Series, SeriesState
from tests.dicomweb.conftest import ON_DEMAND_DESCRIPTION, READ, SCALE, STORE, Site, fresh_copies

pytestmark = pytest.mark.integration


def _value(item: dict[str, Any], tag: str) -> Any:
    return ((item.get(tag) or {}).get("Value") or [None])[0]


def test_qido_lists_the_virtual_series_and_wado_derives_it(site: Site, ct_series: dict[str, list[Path]],
                                                           tmp_path: Path) -> None:
    files = fresh_copies(ct_series[next(k for k in ct_series if k.startswith("cptac"))], tmp_path,
                         series_description=ON_DEMAND_DESCRIPTION)
    datasets = [dcmread(f) for f in files]
    study, source = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    answer = site.client(STORE).store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == len(files)

    def routed() -> bool:
        with site.node.session_factory() as s:
            return s.scalar(select(Series.state).where(Series.series_uid == source)) == SeriesState.routed
    site.wait(routed, timeout_s=60)

    def jobs() -> list[Job]:
        with site.node.session_factory() as s:
            return list(s.scalars(select(Job).join(Series, Series.id == Job.series_pk)
                                  .where(Series.series_uid == source)))
    assert jobs() == []  # on demand: routed, nothing derived yet

    client = site.client(READ)
    listed = {_value(r, "0020000E"): r for r in client.search_for_series(
        study, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"])}
    assert set(listed) - {source}, listed
    (virtual,) = set(listed) - {source}
    assert str(_value(listed[virtual], "0008103E")).startswith(f"SRx{SCALE} bicubic: ")
    assert _value(listed[virtual], "00201209") == len(files)
    assert jobs() == []  # a search starts nothing

    derived = client.retrieve_series(study, virtual)
    assert len(derived) == len(files)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    for ds in derived:
        assert str(ds.SeriesInstanceUID) == virtual
        assert ds.pixel_array.shape == (SCALE * rows, SCALE * cols)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    (job,) = jobs()
    assert job.derived_series_uid == virtual and job.rule_name == "on-demand"
    # Now stored: searched and retrieved from the index, the same series, no second job.
    (again,) = [r for r in client.search_for_series(study) if _value(r, "0020000E") == virtual]
    assert _value(again, "00201209") == len(files)
    assert len(client.retrieve_series_metadata(study, virtual)) == len(files)
    assert len(jobs()) == 1
