"""WADO-RS transfer syntax negotiation on a compressed instance (JPEG Lossless, stored as sent):
decompressed to Explicit VR Little Endian by default, as stored with transfer-syntax=*, and its
frame either decoded or as the stored JPEG bitstream."""
from __future__ import annotations

import email.parser
import email.policy
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from tests.dicomweb.conftest import ON_DEMAND_DESCRIPTION, READ, STORE, Site, auth

pytestmark = pytest.mark.integration

JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


def _parts(rsp: requests.Response) -> list[tuple[str, bytes]]:
    assert rsp.status_code == 200, rsp.text[:300]
    head = f"Content-Type: {rsp.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + rsp.content)
    return [(part.get_content_type() + "".join(f"; {k}={v}" for k, v in part.get_params()[1:]),
             part.get_payload(decode=True)) for part in message.iter_parts()]


def test_compressed_instance_is_decompressed_or_sent_as_stored(site: Site, shared_dir: Path, tmp_path: Path) -> None:
    ds = dcmread(shared_dir / "data" / "misc" / "ct_nema-ct1_jpeg-lossless-sv1.dcm")
    assert ds.file_meta.TransferSyntaxUID == JPEG_LOSSLESS
    # New UIDs, and a description that an on-demand rule takes: stored and listed, nothing derived.
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = ON_DEMAND_DESCRIPTION
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    answer = site.client(STORE).store_instances([dcmread(path)])
    assert len(answer.ReferencedSOPSequence) == 1
    decoded = dcmread(path).pixel_array
    url = f"{site.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    (default,) = site.client(READ).retrieve_series(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    assert default.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert default.SOPInstanceUID == ds.SOPInstanceUID  # decompressed, still the same instance
    assert np.array_equal(default.pixel_array, decoded)  # lossless: the same values

    ((media, data),) = _parts(requests.get(url, timeout=30, headers={
        **auth(READ), "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}))
    assert f"transfer-syntax={JPEG_LOSSLESS}" in media and data == path.read_bytes()

    frames = f"{url}/frames/1"
    ((media, raw),) = _parts(requests.get(frames, headers=auth(READ), timeout=30))
    assert media.startswith("application/octet-stream")
    assert np.array_equal(np.frombuffer(raw, dtype=decoded.dtype).reshape(decoded.shape), decoded)
    ((media, stored),) = _parts(requests.get(frames, timeout=30, headers={
        **auth(READ), "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}))
    assert media.startswith("image/jpeg") and stored == next(generate_frames(ds.PixelData, number_of_frames=1))
