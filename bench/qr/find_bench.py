"""C-FIND latency: srnode vs Orthanc answering the same queries over the same generated catalogue.

The catalogue: `patients` x 2 studies x 4 series (CT/MR, varied descriptions) x `per_series`
instances, dates spread over 2015-2024. Orthanc receives every instance as a Part 10 file over
its REST API; srnode's index receives the same attribute values as bulk rows (ingest of files
is measured in the Storage SCP section; C-FIND reads only the index). Each query runs on one
open association from the same pynetdicom requester, `repeats` times per server, alternating.
"""
from __future__ import annotations

import http.client
import io
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from sqlalchemy import insert
from tqdm import tqdm

from bench.qr.common import start_node
from dicom_node.ae import set_tcp_nodelay
from dicom_node.index.models import Instance, Patient, Series, SeriesState, Study
from tests.orthanc import Orthanc

ROOT = "1.2.826.0.1.3680043.10.1236."
SERIES_KINDS = [("CT", "AXIAL 1.0 B40f"), ("CT", "CORONAL 3.0"), ("MR", "T2 TSE AX"), ("MR", "T1 SAG")]


@dataclass(frozen=True)
class Row:
    """Attribute values of one generated instance."""

    patient: int
    study: int
    series: int
    instance: int

    @property
    def study_uid(self) -> str:
        return f"{ROOT}{self.patient + 1}.{self.study + 1}"

    @property
    def series_uid(self) -> str:
        return f"{self.study_uid}.{self.series + 1}"

    @property
    def sop_uid(self) -> str:
        return f"{self.series_uid}.{self.instance + 1}"

    @property
    def study_date(self) -> str:
        day = (self.patient * 2 + self.study) * 37 % 3650
        return time.strftime("%Y%m%d", time.gmtime(1420070400 + day * 86400))  # from 2015-01-01


def catalogue(patients: int, per_series: int) -> Iterator[Row]:
    for p in range(patients):
        for st in range(2):
            for se in range(len(SERIES_KINDS)):
                for i in range(per_series):
                    yield Row(p, st, se, i)


def dataset(row: Row) -> Dataset:
    """The instance as a tiny (2x2) but complete CT/MR image."""
    modality, description = SERIES_KINDS[row.series]
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = row.sop_uid
    ds.PatientName = f"PAT^{row.patient:05d}"
    ds.PatientID = f"P{row.patient:05d}"
    ds.PatientBirthDate, ds.PatientSex = "19600101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = row.study_uid, row.study_date, "101500"
    ds.AccessionNumber, ds.StudyID = f"A{row.patient:05d}{row.study}", str(row.study + 1)
    ds.StudyDescription, ds.ReferringPhysicianName = "BENCH", ""
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = row.series_uid, modality, row.series + 1
    ds.SeriesDescription, ds.InstanceNumber = description, row.instance + 1
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = b"\x00" * 8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, UID(row.sop_uid)
    return ds


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def fill_srnode_index(node: Any, patients: int, per_series: int) -> None:
    """Bulk rows with the values ingest would index (ids assigned here, in one transaction)."""
    with node.engine.begin() as conn:
        conn.execute(insert(Patient), [
            {"id": p + 1, "patient_id": f"P{p:05d}", "issuer": "", "patient_name": f"PAT^{p:05d}",
             "birth_date": "19600101", "sex": "O"} for p in range(patients)])
        studies, series = [], []
        for p in range(patients):
            for st in range(2):
                row = Row(p, st, 0, 0)
                study_pk = p * 2 + st + 1
                studies.append({"id": study_pk, "patient_pk": p + 1, "study_uid": row.study_uid,
                                "study_date": row.study_date, "study_time": "101500",
                                "accession_number": f"A{p:05d}{st}", "study_id": str(st + 1),
                                "study_description": "BENCH", "referring_physician": ""})
                for se, (modality, description) in enumerate(SERIES_KINDS):
                    series.append({"id": (study_pk - 1) * len(SERIES_KINDS) + se + 1, "study_pk": study_pk,
                                   "series_uid": Row(p, st, se, 0).series_uid, "modality": modality,
                                   "series_number": se + 1, "series_description": description,
                                   "state": SeriesState.routed})
        conn.execute(insert(Study), studies)
        conn.execute(insert(Series), series)
        batch: list[dict[str, Any]] = []
        for row in tqdm(catalogue(patients, per_series), total=patients * 8 * per_series, desc="srnode index",
                        unit="inst"):
            series_pk = ((row.patient * 2 + row.study) * len(SERIES_KINDS)) + row.series + 1
            batch.append({"series_pk": series_pk, "sop_instance_uid": row.sop_uid,
                          "sop_class_uid": dataset_class(row), "instance_number": row.instance + 1,
                          "transfer_syntax_uid": "1.2.840.10008.1.2.1", "rows": 2, "columns": 2,
                          "file_path": f"{row.study_uid}/{row.series_uid}/{row.sop_uid}.dcm", "file_size": 0})
            if len(batch) == 10000:
                conn.execute(insert(Instance), batch)
                batch = []
        if batch:
            conn.execute(insert(Instance), batch)


def dataset_class(row: Row) -> str:
    return "1.2.840.10008.5.1.4.1.1.2" if SERIES_KINDS[row.series][0] == "CT" else "1.2.840.10008.5.1.4.1.1.4"


def fill_orthanc(orthanc: Orthanc, patients: int, per_series: int, threads: int = 3) -> None:
    """POST every instance to Orthanc's /instances (keep-alive connections, a few in parallel)."""
    host, port = orthanc.url.removeprefix("http://").split(":")
    rows = list(catalogue(patients, per_series))
    chunks = [rows[i::threads] for i in range(threads)]
    bar = tqdm(total=len(rows), desc="Orthanc ingest", unit="inst")

    def post_all(chunk: list[Row]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        for row in chunk:
            conn.request("POST", "/instances", body=part10(dataset(row)))
            rsp = conn.getresponse()
            rsp.read()
            if rsp.status != 200:
                raise RuntimeError(f"Orthanc refused {row.sop_uid}: HTTP {rsp.status}")
            bar.update()
        conn.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post_all, chunks))
    bar.close()


def queries(patients: int) -> dict[str, Dataset]:
    """The measured queries (identifier per name)."""
    mid = Row(patients // 2, 1, 2, 0)

    def ident(level: str, **keys: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for k, v in keys.items():
            setattr(ds, k, v)
        return ds

    series_keys = {"SeriesInstanceUID": "", "Modality": "", "SeriesDescription": "", "SeriesNumber": "",
                   "NumberOfSeriesRelatedInstances": ""}
    return {
        "SERIES of one study (StudyInstanceUID)": ident("SERIES", StudyInstanceUID=mid.study_uid, **series_keys),
        "SERIES by Modality + SeriesDescription wildcard + 30-day StudyDate range": ident(
            "SERIES", **{**series_keys, "Modality": "MR", "SeriesDescription": "T2*"},
            StudyDate=f"{mid.study_date[:6]}01-{mid.study_date[:6]}30"),
        "STUDY by PatientName wildcard": ident(
            "STUDY", PatientName=f"PAT^{mid.patient:05d}*", StudyInstanceUID="", StudyDate="",
            ModalitiesInStudy="", NumberOfStudyRelatedInstances=""),
        "IMAGE of one series": ident("IMAGE", StudyInstanceUID=mid.study_uid, SeriesInstanceUID=mid.series_uid,
                                     SOPInstanceUID="", InstanceNumber=""),
    }


@dataclass
class Timing:
    server: str
    query: str
    results: int = 0
    ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        return sorted(self.ms)[max(0, int(round(0.95 * len(self.ms))) - 1)]


def _time_query(assoc: Any, identifier: Dataset) -> tuple[float, int]:
    started = time.perf_counter()
    n = 0
    for status, _ in assoc.send_c_find(identifier, FIND):
        if status.Status in (0xFF00, 0xFF01):
            n += 1
        elif status.Status != 0x0000:
            raise RuntimeError(f"C-FIND failed: 0x{status.Status:04X}")
    return 1000 * (time.perf_counter() - started), n


def run_find_bench(workdir: Path, patients: int, per_series: int, repeats: int) -> list[Timing]:
    """Fill both servers, then time every query `repeats` times on each (alternating)."""
    from tests.conftest import free_port

    orthanc = Orthanc(workdir / "orthanc", {"bench": ["BENCHSCU", "127.0.0.1", 1]}, free_port(), free_port())
    node = start_node(workdir / "srnode", peers={"bench": ("BENCHSCU", 1)})
    try:
        fill_srnode_index(node, patients, per_series)
        fill_orthanc(orthanc, patients, per_series)
        ae = AE("BENCHSCU")
        ae.add_requested_context(FIND)
        # The requester turns Nagle off too, or each request waits ~40 ms for a delayed ACK.
        nodelay: list[evt.EventHandlerType] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
        assert node.port is not None  # set by start_node
        servers = {
            "srnode": ae.associate("127.0.0.1", node.port, ae_title="SRNODE", evt_handlers=nodelay),
            "Orthanc": ae.associate("127.0.0.1", orthanc.dicom_port, ae_title="ORTHANC", evt_handlers=nodelay),
        }
        timings: list[Timing] = []
        try:
            for name, identifier in queries(patients).items():
                per = {s: Timing(s, name) for s in servers}
                for assoc in servers.values():  # warm-up (caches, first-query plans)
                    _time_query(assoc, identifier)
                for _ in tqdm(range(repeats), desc=name[:40], unit="q"):
                    for s, assoc in servers.items():
                        ms, n = _time_query(assoc, identifier)
                        per[s].ms.append(ms)
                        per[s].results = n
                timings += per.values()
        finally:
            for assoc in servers.values():
                assoc.release()
        return timings
    finally:
        node.stop(grace_s=2)
        orthanc.stop()
