"""A real node (DICOM listener, pipeline with the embedded worker, admin app with /dicomweb) and a
real Orthanc with its DICOMweb plugin: Orthanc is the node's DICOMweb destination (peer `web`)
and, through its plugin's `servers`, a DICOMweb client of the node."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from config.loader import parse_config
from dicom_node import pipeline
from dicom_node.admin import service as admin_service
from dicom_node.index.models import Job, JobState, Series
from dicom_node.server import NodeServer
from dicom_node.wiring import build_node
from tests.conftest import free_port
from tests.faults.harness import wait_until
from tests.orthanc import Orthanc

ADMIN = "dw-admin-token-0123456789"
READ = "dw-read-token-0123456789"
STORE = "dw-store-token-0123456789"
VIEWER_ORIGIN = "http://viewer.example:3000"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ON_DEMAND_DESCRIPTION = "srnode on-demand test"
# OHIF's built app, where `make viewer` (a prerequisite of `make test`) puts it.
OHIF_DIR = Path(__file__).resolve().parents[2] / "vendor" / "ohif"
# x4, the node's real job: 512² slices become 2048² (bicubic, so the tests are about DICOMweb).
SCALE = 4
MAX_STOW_MB = 6  # above the four-slice STOW-RS requests of the tests (about 2 MiB each)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Site:
    node: NodeServer
    orthanc: Orthanc
    url: str  # http://127.0.0.1:<admin port>/dicomweb

    def client(self, token: str) -> DICOMwebClient:
        return DICOMwebClient(url=self.url, headers=auth(token))

    def wait(self, what: Callable[[], Any], timeout_s: float = 120, step_s: float = 0.25) -> Any:
        return wait_until(what, timeout_s, str(what), every_s=step_s)

    def finished_job(self, source_series_uid: str, timeout_s: float = 180) -> Job:
        def done() -> Job | None:
            with self.node.session_factory() as s:
                job = s.scalar(select(Job).join(Series, Series.id == Job.series_pk)
                               .where(Series.series_uid == source_series_uid))
                return job if job is not None and job.state in (JobState.done, JobState.failed) else None
        job = self.wait(done, timeout_s)
        assert job.state == JobState.done, job.error
        return job


@pytest.fixture(scope="package")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not PLUGIN.exists():
        pytest.fail(f"Orthanc's DICOMweb plugin is not installed at {PLUGIN} (make system-deps)")
    tmp = tmp_path_factory.mktemp("dicomweb")
    orthanc_http = free_port()
    cfg = parse_config({
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": 0, "storage_dir": str(tmp / "storage"),
                 "database_url": f"sqlite:///{tmp / 'index.db'}", "min_free_disk_mb": 0, "shutdown_grace_s": 2,
                 "require_known_callers": False},
        "peers": {"web": {"kind": "dicomweb", "url": f"http://127.0.0.1:{orthanc_http}/dicom-web/",
                          "batch_instances": 3}},
        "series": {"stable_after_s": 2, "check_interval_s": 0.5},
        # STOW-RS series go back to the archive by DICOMweb; C-STORE ones are only upscaled.
        "routing": [
            # Series stored with ON_DEMAND_DESCRIPTION are upscaled only when retrieved (QIDO-RS lists them).
            {"name": "on-demand", "match": {"series_description": f"^{ON_DEMAND_DESCRIPTION}$"}, "model": "bicubic",
             "on_demand": True},
            {"name": "from-dicomweb", "match": {"modality": "CT", "source": "dicomweb"}, "model": "bicubic",
             "destinations": ["web"]},
            {"name": "from-dimse", "match": {"modality": "CT", "source": "dimse"}, "model": "bicubic"},
        ],
        "models": {"bicubic": {"arch": "bicubic", "scale": SCALE}},
        "worker": {"device": "cpu", "heartbeat_timeout_s": 10, "batch_size": 1},
        "send": {"backoff_initial_s": 1, "backoff_max_s": 2},
        "admin": {"host": "127.0.0.1", "port": 0, "tokens": {ADMIN: "admin", READ: "read", STORE: "store"}},
        "dicomweb": {"cors_origins": [VIEWER_ORIGIN], "max_stow_mb": MAX_STOW_MB, "ohif_dir": str(OHIF_DIR)},
    }, environ={})
    node = build_node(cfg, services=[pipeline.make_service, admin_service.make_service])
    node.start()
    try:
        from dicom_node.admin.service import AdminService

        admin = next(s for s in node.services if isinstance(s, AdminService))
        url = f"http://127.0.0.1:{admin.port}/dicomweb"
        orthanc = Orthanc(tmp / "orthanc", {}, http_port=orthanc_http, Plugins=[str(PLUGIN)], DicomWeb={
            "Enable": True, "Root": "/dicom-web/",
            "Servers": {"srnode": {"Url": url + "/", "HttpHeaders": {"Authorization": f"Bearer {ADMIN}"}}},
        })
        try:
            yield Site(node, orthanc, url)
        finally:
            orthanc.stop()
    finally:
        node.stop(grace_s=2)


@pytest.fixture(scope="package")
def ct_series(ct_dirs: list[Path]) -> dict[str, list[Path]]:
    """Four slices of each real CT series, by folder name."""
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())[:4] for d in ct_dirs}


def fresh_copies(files: list[Path], out: Path, series_description: str | None = None) -> list[Path]:
    """The files under new Study/Series/SOP Instance UIDs: a series no other test has touched."""
    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    copies = []
    for f in files:
        ds = dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        if series_description is not None:
            ds.SeriesDescription = series_description
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copies.append(out / f.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


@pytest.fixture(scope="package")
def stowed(site: Site, ct_series: dict[str, list[Path]]) -> dict[str, Any]:
    """The Lung-PET-CT-Dx slices stored by STOW-RS, and the job their series went through."""
    files = ct_series[next(k for k in ct_series if k.startswith("lung-pet-ct-dx"))]
    datasets = [dcmread(f) for f in files]
    answer = site.client(STORE).store_instances(datasets)
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    # Stored and indexed before the answer: readable at once, before any assembly pass.
    listed = site.client(READ).search_for_instances(study, series)
    job = site.finished_job(series)
    return {"answer": answer, "files": files, "datasets": datasets, "study": study, "series": series,
            "listed_at_once": listed, "job": job}
