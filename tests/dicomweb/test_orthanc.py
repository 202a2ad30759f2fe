"""srnode and a real Orthanc with its DICOMweb plugin, both ways: Orthanc as the node's DICOMweb
destination (the outbox's STOW-RS, with the C-STORE retries and health), and Orthanc's plugin as a
DICOMweb client of srnode (STOW-RS to it, QIDO-RS and WADO-RS from it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.index.models import Outbox, OutboxState
from tests.dicomweb.conftest import READ, SCALE, STORE, Site, auth, fresh_copies

pytestmark = pytest.mark.integration


def orthanc_series(site: Site, series_uid: str) -> list[dict[str, Any]]:
    found = site.orthanc.series_by_uid(series_uid)
    return site.orthanc.get(f"/series/{found[0]}/instances") if found else []


def delivery(site: Site) -> dict[str, Any]:
    admin = site.url.rsplit("/dicomweb", 1)[0]
    return requests.get(f"{admin}/api/peers", headers=auth(READ), timeout=10).json()["web"]["delivery"]


def test_derived_series_reaches_orthanc_by_stow(site: Site, stowed: dict[str, Any]) -> None:
    derived = stowed["job"].derived_series_uid
    instances = site.wait(lambda: len(orthanc_series(site, derived)) == 4 and orthanc_series(site, derived))
    tags = site.orthanc.get(f"/instances/{instances[0]['ID']}/simplified-tags")
    assert int(tags["Rows"]) == SCALE * int(stowed["datasets"][0].Rows)
    assert site.wait(lambda: delivery(site)["state"] == "ok" and delivery(site)["pending"] == 0)


def test_outbox_retries_a_dicomweb_peer_that_was_down(site: Site, ct_series: dict[str, list[Path]],
                                                      tmp_path: Path) -> None:
    # A copy of real slices under new UIDs: a series of its own, stored while Orthanc is down.
    files = fresh_copies(ct_series[next(k for k in ct_series if k.startswith("lung-pet-ct-dx"))], tmp_path)
    datasets = [dcmread(f) for f in files]
    series = str(datasets[0].SeriesInstanceUID)
    site.orthanc.stop()
    try:
        site.client(STORE).store_instances(datasets)
        job = site.finished_job(series)

        def failed_attempts() -> bool:
            with site.node.session_factory() as s:
                rows = s.scalars(select(Outbox).where(Outbox.job_pk == job.id)).all()
            return len(rows) == 4 and all(r.state == OutboxState.pending and r.attempts >= 1 for r in rows)

        site.wait(failed_attempts, timeout_s=60)
        health = delivery(site)
        assert health["state"] == "failing" and "STOW-RS" in health["last_error"], health
    finally:
        site.orthanc.start()
    site.wait(lambda: len(orthanc_series(site, job.derived_series_uid)) == 4, timeout_s=60)
    assert site.wait(lambda: delivery(site)["state"] == "ok")
    with site.node.session_factory() as s:
        states = set(s.scalars(select(Outbox.state).where(Outbox.job_pk == job.id)))
    assert states == {OutboxState.delivered}


def test_orthanc_dicomweb_plugin_as_a_client_of_srnode(site: Site, stowed: dict[str, Any],
                                                       ct_series: dict[str, list[Path]], tmp_path: Path) -> None:
    # QIDO-RS through Orthanc's plugin.
    found = site.orthanc.post("/dicom-web/servers/srnode/get",
                              {"Uri": "/studies", "Arguments": {"StudyInstanceUID": stowed["study"]}})
    assert [s["0020000D"]["Value"][0] for s in found] == [stowed["study"]]
    # WADO-RS: Orthanc retrieves the original series from srnode into its own store.
    site.orthanc.post("/dicom-web/servers/srnode/retrieve",
                      {"Resources": [{"Study": stowed["study"], "Series": stowed["series"]}]})
    assert len(orthanc_series(site, stowed["series"])) == 4
    # STOW-RS: Orthanc sends a series it holds to srnode.
    files = fresh_copies(ct_series[next(k for k in ct_series if k.startswith("ge-head"))], tmp_path)
    orthanc_id = site.orthanc.upload(files)
    site.orthanc.post("/dicom-web/servers/srnode/stow", {"Resources": [orthanc_id]})
    head = dcmread(files[0], stop_before_pixels=True)
    listed = site.client(READ).search_for_instances(str(head.StudyInstanceUID), str(head.SeriesInstanceUID))
    assert {i["00080018"]["Value"][0] for i in listed} >= {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                                                          for f in files}
