"""srnode's DICOMweb server through `dicomweb-client` and plain HTTP: STOW-RS routed like C-STORE,
QIDO-RS with C-FIND's matching and counts, WADO-RS instances, metadata, frames, rendered; tokens."""
from __future__ import annotations

import http.client
import io
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from requests import HTTPError
from sqlalchemy import select

from dicom_node.index.models import Instance, Series
from dicom_node.multipart import new_boundary, related_type, write_parts
from dicom_node.routing import DICOMWEB_SENDER
from tests.dicomweb.conftest import (
    ADMIN,
    MAX_STOW_MB,
    READ,
    SCALE,
    STORE,
    VIEWER_ORIGIN,
    Site,
    auth,
    fresh_copies,
)

pytestmark = pytest.mark.integration

FAILED_SOP = "00081198"
REFERENCED_SOP = "00081199"


def value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def test_stow_stores_before_answering_and_routes_by_source(site: Site, stowed: dict[str, Any]) -> None:
    answer: Dataset = stowed["answer"]
    assert len(answer.ReferencedSOPSequence) == 4 and "FailedSOPSequence" not in answer
    sops = {str(ds.SOPInstanceUID) for ds in stowed["datasets"]}
    assert {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence} == sops
    assert all(str(i.RetrieveURL).startswith(site.url + "/studies/") for i in answer.ReferencedSOPSequence)
    assert {value(r, "00080018") for r in stowed["listed_at_once"]} == sops
    # Assembled and routed like a C-STORE series, by the rule that matches `source: dicomweb`.
    assert stowed["job"].rule_name == "from-dicomweb"
    with site.node.session_factory() as s:
        series = s.scalar(select(Series).where(Series.series_uid == stowed["series"]))
        assert series.calling_ae == DICOMWEB_SENDER


def test_qido_lists_the_derived_series_with_counts_and_wado_returns_it(site: Site, stowed: dict[str, Any]) -> None:
    client = site.client(READ)
    derived = stowed["job"].derived_series_uid
    found = {value(r, "0020000E"): r for r in client.search_for_series(stowed["study"])}
    assert set(found) == {stowed["series"], derived}
    assert value(found[derived], "00201209") == 4 and value(found[stowed["series"]], "00201209") == 4
    # RetrieveURL follows the Host header (dicomweb-client's lacks the port, so check it with requests).
    (listed,) = requests.get(f"{site.url}/studies/{stowed['study']}/series", params={"SeriesInstanceUID": derived},
                             headers=auth(READ), timeout=10).json()
    assert value(listed, "00081190") == f"{site.url}/studies/{stowed['study']}/series/{derived}"
    (study,) = client.search_for_studies(search_filters={"StudyInstanceUID": stowed["study"]})
    assert (value(study, "00201206"), value(study, "00201208")) == (2, 8)  # series, instances
    source_rows = int(stowed["datasets"][0].Rows)
    instances = client.retrieve_series(stowed["study"], derived)
    assert len(instances) == 4 and {int(ds.Rows) for ds in instances} == {SCALE * source_rows}
    shape = (SCALE * source_rows, SCALE * int(stowed["datasets"][0].Columns))
    assert all(ds.pixel_array.shape == shape for ds in instances)
    metadata = client.retrieve_series_metadata(stowed["study"], derived)
    assert len(metadata) == 4 and {value(m, "00280010") for m in metadata} == {SCALE * source_rows}
    assert all("BulkDataURI" in m["7FE00010"] for m in metadata)
    study = client.retrieve_study(stowed["study"])  # the original and the derived series
    assert sorted(str(ds.SeriesInstanceUID) for ds in study) == sorted([stowed["series"]] * 4 + [derived] * 4)


def test_a_c_store_series_takes_the_dimse_rule(site: Site, ct_series: dict[str, list[Path]], tmp_path: Path) -> None:
    files = fresh_copies(ct_series[next(k for k in ct_series if k.startswith("ge-head"))][:3], tmp_path)
    done = subprocess.run(["storescu", "-aet", "SCANNER", "-aec", "SRNODE", "127.0.0.1", str(site.node.port),
                           *map(str, files)], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    job = site.finished_job(str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID))
    assert job.rule_name == "from-dimse"


def test_requests_without_a_fitting_token_are_refused(site: Site) -> None:
    assert requests.get(f"{site.url}/studies", timeout=10).status_code == 401
    assert requests.get(f"{site.url}/studies", headers=auth("not-a-token"), timeout=10).status_code == 401
    post = {"Content-Type": related_type("application/dicom", "b")}
    assert requests.post(f"{site.url}/studies", data=b"--b--\r\n", headers={**post, **auth(READ)},
                         timeout=10).status_code == 403
    assert requests.get(f"{site.url}/studies", headers=auth(STORE), timeout=10).status_code == 403
    with pytest.raises(HTTPError) as refused:
        site.client("nobody").search_for_studies()
    assert refused.value.response.status_code == 401
    assert requests.get(f"{site.url}/studies", headers=auth(ADMIN), timeout=10).status_code == 200


def _post(site: Site, parts: list[tuple[str, bytes]], path: str = "/studies") -> requests.Response:
    boundary = new_boundary()
    return requests.post(site.url + path, data=b"".join(write_parts(parts, boundary)), timeout=60,
                         headers={"Content-Type": related_type("application/dicom", boundary), **auth(STORE)})


def _encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_a_bad_part_is_reported_in_failed_sop_sequence_and_the_rest_land(site: Site,
                                                                         ct_series: dict[str, list[Path]]) -> None:
    files = ct_series[next(k for k in ct_series if k.startswith("cptac"))]
    good = [f.read_bytes() for f in files[:2]]
    truncated = files[2].read_bytes()[:-4096]
    no_pixels = dcmread(files[3])
    del no_pixels.PixelData
    r = _post(site, [("application/dicom", good[0]), ("application/dicom", truncated),
                     ("application/dicom", _encoded(no_pixels)), ("application/dicom", good[1])])
    assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+json", r.text
    body = r.json()
    failed = body[FAILED_SOP]["Value"]
    assert [value(f, "00081197") for f in failed] == [0xC002, 0xC002]  # C-STORE's "malformed" status
    assert value(failed[1], "00081155") == str(no_pixels.SOPInstanceUID)
    stored = {value(i, "00081155") for i in body[REFERENCED_SOP]["Value"]}
    good_sops = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:2]}
    assert stored == good_sops
    bad_sops = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[2:4]}
    with site.node.session_factory() as s:
        indexed = set(s.scalars(select(Instance.sop_instance_uid).where(
            Instance.sop_instance_uid.in_(good_sops | bad_sops))))
    assert indexed == good_sops  # nothing of a refused part in the index


def test_stow_to_a_study_refuses_parts_of_another(site: Site, ct_series: dict[str, list[Path]]) -> None:
    f = ct_series[next(k for k in ct_series if k.startswith("cptac"))][0]
    r = _post(site, [("application/dicom", f.read_bytes())], "/studies/1.2.3.4")
    assert r.status_code == 409
    assert value(r.json()[FAILED_SOP]["Value"][0], "00081197") == 0xA900
    assert _post(site, [("text/plain", b"hello")]).json()[FAILED_SOP]["Value"][0]["00081197"]["Value"] == [0xC000]
    not_multipart = requests.post(site.url + "/studies", data=b"x", timeout=10,
                                  headers={"Content-Type": "application/dicom", **auth(STORE)})
    assert not_multipart.status_code == 415


def test_a_body_over_max_stow_mb_is_refused_with_413(site: Site, ct_series: dict[str, list[Path]],
                                                     tmp_path: Path) -> None:
    files = ct_series[next(k for k in ct_series if k.startswith("ge-head"))]
    part = files[0].read_bytes()
    n = MAX_STOW_MB * 1024 * 1024 // len(part) + 2
    over = fresh_copies([files[0]], tmp_path / "one")  # a SOP Instance UID no other test uses
    copies = [over[0].read_bytes()] + [part] * (n - 1)
    boundary = new_boundary()
    body = b"".join(write_parts([("application/dicom", d) for d in copies], boundary))
    assert len(body) > MAX_STOW_MB * 1024 * 1024
    headers = {"Content-Type": related_type("application/dicom", boundary), **auth(STORE)}
    # Declared by Content-Length: refused before anything is read.
    try:
        r = requests.post(site.url + "/studies", data=body, headers=headers, timeout=60)
        assert r.status_code == 413 and "max_stow_mb" in r.json()["detail"], r.text
    except requests.ConnectionError:
        pytest.fail("the server closed the connection instead of answering 413")
    first = str(dcmread(over[0], stop_before_pixels=True).SOPInstanceUID)
    with site.node.session_factory() as s:
        assert s.scalar(select(Instance.id).where(Instance.sop_instance_uid == first)) is None

    # Chunked (no Content-Length): counted as it arrives, refused once past the limit. Posted to
    # another study, so that the parts read before the limit are refused too and route nothing.
    def chunks() -> Any:
        for at in range(0, len(body), 256 * 1024):
            yield body[at:at + 256 * 1024]
    r = requests.post(site.url + "/studies/1.2.3.4", data=chunks(), headers=headers, timeout=60)
    assert r.status_code == 413 and "max_stow_mb" in r.json()["detail"], r.text


def test_qido_matching_paging_and_includefield(site: Site, stowed: dict[str, Any],
                                               caplog: pytest.LogCaptureFixture) -> None:
    client = site.client(READ)
    first = stowed["datasets"][0]
    pid, date = str(first.PatientID), str(first.StudyDate)
    by_wildcard = client.search_for_studies(search_filters={"PatientID": pid[:4] + "*"})
    assert stowed["study"] in {value(s, "0020000D") for s in by_wildcard}
    assert client.search_for_studies(search_filters={"PatientID": pid + "X*"}) == []
    in_range = client.search_for_studies(search_filters={"StudyDate": f"{date}-{date}", "ModalitiesInStudy": "CT"})
    assert stowed["study"] in {value(s, "0020000D") for s in in_range}
    everything = client.search_for_instances(stowed["study"], stowed["series"])
    page = client.search_for_instances(stowed["study"], stowed["series"], limit=2, offset=1)
    assert [value(i, "00080018") for i in page] == [value(i, "00080018") for i in everything[1:3]]
    (with_field,) = client.search_for_studies(search_filters={"StudyInstanceUID": stowed["study"]},
                                              fields=["NumberOfPatientRelatedStudies"])
    (without,) = client.search_for_studies(search_filters={"StudyInstanceUID": stowed["study"]})
    assert "00201200" in with_field and "00201200" not in without
    bad = requests.get(f"{site.url}/studies?StudyDate=2020-13-99", headers=auth(READ), timeout=10)
    assert bad.status_code == 400 and "StudyDate" in bad.json()["detail"]
    none = requests.get(f"{site.url}/studies/{stowed['study']}/series/{stowed['series']}/instances",
                        params={"limit": "0"}, headers=auth(READ), timeout=10)
    assert none.status_code == 200 and none.json() == []
    # The client is told the bad value; the log is not (it may be patient data).
    with caplog.at_level(logging.INFO, logger="srnode"):
        birth = requests.get(f"{site.url}/studies?PatientBirthDate=1957x0412", headers=auth(READ), timeout=10)
    assert birth.status_code == 400 and "1957x0412" in birth.json()["detail"]
    logged = [r.getMessage() for r in caplog.records if "PatientBirthDate" in r.getMessage()]
    assert logged and not any("1957x0412" in line for line in logged), logged


def test_wado_frames_rendered_and_bulkdata(site: Site, stowed: dict[str, Any]) -> None:
    client = site.client(READ)
    ds = stowed["datasets"][0]
    keys = (stowed["study"], stowed["series"], str(ds.SOPInstanceUID))
    (frame,) = client.retrieve_instance_frames(*keys, frame_numbers=[1])
    assert frame == ds.PixelData
    assert requests.get(f"{site.url}/studies/{keys[0]}/series/{keys[1]}/instances/{keys[2]}/frames/2",
                        headers=auth(READ), timeout=10).status_code == 404
    png = client.retrieve_instance_rendered(*keys, media_types=("image/png",))
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (int(ds.Rows), int(ds.Columns)) and image.dtype == np.uint8
    lung = np.asarray(Image.open(io.BytesIO(client.retrieve_instance_rendered(
        *keys, media_types=("image/png",), params={"window": "-600,1500"}))))
    bone = np.asarray(Image.open(io.BytesIO(client.retrieve_instance_rendered(
        *keys, media_types=("image/png",), params={"preset": "bone"}))))
    assert lung.mean() > bone.mean()  # a lung window shows more of the slice bright than a bone window
    jpeg = requests.get(f"{site.url}/studies/{keys[0]}/series/{keys[1]}/instances/{keys[2]}/rendered",
                        params={"viewport": "128,128"}, headers={**auth(READ), "Accept": "image/jpeg"}, timeout=10)
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).size == (128, 128)
    bad = requests.get(f"{site.url}/studies/{keys[0]}/series/{keys[1]}/instances/{keys[2]}/rendered",
                       params={"preset": "rainbow"}, headers=auth(READ), timeout=10)
    assert bad.status_code == 400
    metadata = client.retrieve_instance_metadata(*keys)
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.endswith(f"/dicomweb/studies/{keys[0]}/series/{keys[1]}/instances/{keys[2]}/bulkdata/7FE00010")
    # The URI's host is the request's Host header, which dicomweb-client sends without the port.
    pixels = client.retrieve_bulkdata(site.url + uri.split("/dicomweb", 1)[1])
    assert pixels == [ds.PixelData]


def test_wado_transfer_syntax_and_missing_instances(site: Site, stowed: dict[str, Any]) -> None:
    ds = stowed["datasets"][0]
    url = f"{site.url}/studies/{stowed['study']}/series/{stowed['series']}/instances/{ds.SOPInstanceUID}"
    implicit = requests.get(url, timeout=30, headers={
        **auth(READ), "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'})
    assert implicit.status_code == 200 and "transfer-syntax=1.2.840.10008.1.2\r\n" in implicit.text[:400]
    refused = requests.get(url, timeout=10, headers={**auth(READ), "Accept": "application/dicom+xml"})
    assert refused.status_code == 406
    missing = requests.get(f"{site.url}/studies/{stowed['study']}/series/1.2.3.4", headers=auth(READ), timeout=10)
    assert missing.status_code == 404


def test_keep_alive_requests_are_not_held_by_delayed_acks(site: Site) -> None:
    # The admin app's socket once lacked TCP_NODELAY: every request after the first on a
    # connection took >= 40 ms (a delayed ACK). The fastest of a few shows it even under load.
    port = int(site.url.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(8):
        started = time.perf_counter()
        conn.request("GET", "/dicomweb/studies?limit=1", headers=auth(READ))
        rsp = conn.getresponse()
        rsp.read()
        assert rsp.status == 200
        times.append(time.perf_counter() - started)
    conn.close()
    assert min(times[1:]) < 0.030, times


def test_cors_lets_the_configured_viewer_origin_in(site: Site) -> None:
    preflight = {"Origin": VIEWER_ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    ok = requests.options(f"{site.url}/studies", headers=preflight, timeout=10)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    other = requests.options(f"{site.url}/studies", headers={**preflight, "Origin": "http://elsewhere"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers
