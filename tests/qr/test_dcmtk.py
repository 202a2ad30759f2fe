"""The node driven by DCMTK findscu, movescu and getscu (real processes, real CT stored through the node)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.index.db import session_scope
from dicom_node.ingest import index_instance, store_encoded
from tests.qr.conftest import NODE_AE, SCU_AE, RunningNode, run
from tests.qr.synthetic import ROOT, make_instance

pytestmark = pytest.mark.integration

LUNG = "lung-pet-ct-dx_Lung_Dx-A0002_chest"
CPTAC = "cptac-lscc_C3N-00247_chest"
GE = "ge-head_dcm-qa-ct"


def findscu(node: RunningNode, out: Path, *keys: str, root: str = "-S",
            extra: tuple[str, ...] = ()) -> tuple[list, str]:
    """Run findscu with -k keys; return the extracted response identifiers and the tool's output."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["findscu", "-v", root, "-aet", SCU_AE, "-aec", NODE_AE, "-X", "-od", str(out), *extra]
    for key in keys:
        cmd += ["-k", key]
    res = run(cmd + ["127.0.0.1", str(node.port)])
    assert res.returncode == 0, res.stdout + res.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], res.stdout + res.stderr


def test_study_root_wildcard_query(node: RunningNode, tmp_path: Path) -> None:
    found, _ = findscu(node, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=*-A000?", "StudyInstanceUID",
                       "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "PatientName")
    assert [str(ds.StudyInstanceUID) for ds in found] == [node.studies[LUNG]]
    assert found[0].NumberOfStudyRelatedInstances == 30 and found[0].ModalitiesInStudy == "CT"
    assert found[0].RetrieveAETitle == NODE_AE


def test_date_range_at_series_level(node: RunningNode, tmp_path: Path) -> None:
    found, _ = findscu(node, tmp_path, "QueryRetrieveLevel=SERIES", "StudyDate=20080101-20121231", "Modality=CT",
                       "SeriesInstanceUID", "SeriesDescription", "NumberOfSeriesRelatedInstances")
    assert [(str(ds.SeriesInstanceUID), ds.NumberOfSeriesRelatedInstances) for ds in found] == [
        (node.series[CPTAC], 24)]
    assert found[0].SeriesDescription == "LUNG 3.0  B70f"


def test_patient_root_image_level(node: RunningNode, tmp_path: Path) -> None:
    found, _ = findscu(node, tmp_path, "QueryRetrieveLevel=IMAGE", "PatientID=C3N-00247",
                       f"StudyInstanceUID={node.studies[CPTAC]}", f"SeriesInstanceUID={node.series[CPTAC]}",
                       "SOPInstanceUID", "InstanceNumber", root="-P")
    assert {str(ds.SOPInstanceUID) for ds in found} == node.sop_uids[CPTAC]
    assert sorted(int(ds.InstanceNumber) for ds in found) == list(range(38, 62))


@pytest.fixture(scope="module")
def big_series(node: RunningNode) -> str:
    """A series of 1000 indexed instances (rows only: enough C-FIND responses to cancel midway)."""
    study, series = f"{ROOT}900", f"{ROOT}900.1"
    with session_scope(node.server.session_factory) as session:
        for n in range(1, 1001):
            ds = make_instance("BIG^SERIES", "PBIG", study, series_uid=series, sop_uid=f"{series}.{n}",
                               instance_number=n)
            index_instance(session, ds, f"{study}/{series}/{series}.{n}.dcm", 0, str(ds.file_meta.TransferSyntaxUID),
                           "TESTSCU")
    return series


def test_find_cancel(node: RunningNode, big_series: str, tmp_path: Path) -> None:
    found, output = findscu(node, tmp_path, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID",
                            f"SeriesInstanceUID={big_series}", extra=("--cancel", "2"))
    assert "Final Find Response (Cancel" in output and len(found) < 1000, output[-2000:]


def test_bad_query_gets_a_failure_status(node: RunningNode, tmp_path: Path) -> None:
    _, output = findscu(node, tmp_path, "QueryRetrieveLevel=SERIES", "StudyDate=20241301", "SeriesInstanceUID",
                        extra=("-d",))  # debug output shows the response's Error Comment
    assert "DIMSE Status                  : 0xa900" in output, output[-2000:]
    assert "[StudyDate: '20241301' is not a DA value (YYYYMMDD)] #  50, 1 ErrorComment" in output, output[-2000:]


def test_result_limit_over_the_network(node: RunningNode, tmp_path: Path) -> None:
    qr_cfg = node.server.cfg.query_retrieve
    old, qr_cfg.max_results = qr_cfg.max_results, 2
    try:
        found, output = findscu(node, tmp_path, "QueryRetrieveLevel=SERIES", "SeriesInstanceUID")
    finally:
        qr_cfg.max_results = old
    assert len(found) == 2 and "Final Find Response (Refused: OutOfResources)" in output, output[-2000:]


def _same_instances(received: list[Path], originals: Path) -> None:
    by_uid = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in originals.iterdir() if p.is_file()}
    assert len(received) == len(by_uid)
    for path in received:
        got = dcmread(path)
        want = by_uid[str(got.SOPInstanceUID)]
        assert got.PixelData == want.PixelData  # bit for bit: stored values never re-encoded
        assert got.RescaleIntercept == want.RescaleIntercept and got.PixelRepresentation == want.PixelRepresentation


def test_move_real_ct_series(node: RunningNode, tmp_path: Path, ct_dirs: list[Path]) -> None:
    res = run(["movescu", "-v", "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-aem", SCU_AE, "+P", str(node.scu_port),
               "-od", str(tmp_path), "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={node.studies[GE]}",
               "-k", f"SeriesInstanceUID={node.series[GE]}", "127.0.0.1", str(node.port)], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    _same_instances(sorted(tmp_path.glob("CT*")), next(d for d in ct_dirs if d.name == GE))


def test_move_to_unknown_destination(node: RunningNode, tmp_path: Path) -> None:
    res = run(["movescu", "-v", "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-aem", "NOSUCHAE", "+P", str(node.scu_port),
               "-od", str(tmp_path),
               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={node.studies[LUNG]}",
               "127.0.0.1", str(node.port)])
    output = res.stdout + res.stderr
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in output, output[-2000:]
    assert not list(tmp_path.glob("CT*"))


def test_get_real_ct_series(node: RunningNode, tmp_path: Path, ct_dirs: list[Path]) -> None:
    res = run(["getscu", "-v", "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-od", str(tmp_path),
               "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={node.studies[CPTAC]}",
               "-k", f"SeriesInstanceUID={node.series[CPTAC]}", "127.0.0.1", str(node.port)], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    _same_instances(sorted(tmp_path.glob("CT*")), next(d for d in ct_dirs if d.name == CPTAC))


@pytest.fixture(scope="module")
def jpeg_ct(node: RunningNode, shared_dir: Path) -> Dataset:
    """The NEMA CT1 JPEG Lossless file, stored as received (compressed) through dicom_node.ingest."""
    path = shared_dir / "data" / "misc" / "ct_nema-ct1_jpeg-lossless-sv1.dcm"
    store_encoded(node.server.session_factory, node.server.storage_dir, path.read_bytes(), "TESTSCU")
    return dcmread(path)


@pytest.mark.parametrize("tool", ["movescu", "getscu"])
def test_compressed_instance_decompressed_for_an_uncompressed_requester(
        node: RunningNode, jpeg_ct: Dataset, tool: str, tmp_path: Path) -> None:
    cmd = [tool, "-v", "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-od", str(tmp_path)]
    if tool == "movescu":
        cmd += ["-aem", SCU_AE, "+P", str(node.scu_port)]  # movescu accepts uncompressed syntaxes only
    res = run(cmd + ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={jpeg_ct.StudyInstanceUID}",
                     "-k", f"SeriesInstanceUID={jpeg_ct.SeriesInstanceUID}",
                     "-k", f"SOPInstanceUID={jpeg_ct.SOPInstanceUID}", "127.0.0.1", str(node.port)], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    (received,) = list(tmp_path.glob("CT*"))
    got = dcmread(received)
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(got.pixel_array, jpeg_ct.pixel_array)  # lossless: the same stored values
