"""Orthanc as the requesting PACS: its REST /modalities/<node>/query and /move against the node."""
from __future__ import annotations

import urllib.error
from collections.abc import Iterator

import pytest

from tests.orthanc import Orthanc
from tests.qr.conftest import NODE_AE, RunningNode

pytestmark = pytest.mark.integration
LUNG = "lung-pet-ct-dx_Lung_Dx-A0002_chest"
CPTAC = "cptac-lscc_C3N-00247_chest"


@pytest.fixture(scope="module")
def orthanc(node: RunningNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), {"srnode": [NODE_AE, "127.0.0.1", node.port]},
                     dicom_port=node.orthanc_dicom_port)
    yield server
    server.stop()


def query(orthanc: Orthanc, level: str, keys: dict[str, str]) -> list[dict[str, dict[str, str]]]:
    q = orthanc.post("/modalities/srnode/query", {"Level": level, "Query": keys})
    return orthanc.get(f"/queries/{q['ID']}/answers?expand&simplify")


def test_orthanc_queries_the_node(orthanc: Orthanc, node: RunningNode) -> None:
    studies = query(orthanc, "Study", {"PatientID": "*0*", "StudyDate": "20000101-20091231"})
    assert [a["StudyInstanceUID"] for a in studies] == [node.studies[LUNG]]
    series = query(orthanc, "Series", {"StudyInstanceUID": node.studies[CPTAC], "SeriesDescription": "*B70f",
                                       "NumberOfSeriesRelatedInstances": ""})
    assert [(a["SeriesInstanceUID"], a["NumberOfSeriesRelatedInstances"]) for a in series] == [
        (node.series[CPTAC], "24")]


def test_orthanc_moves_a_series_to_itself(orthanc: Orthanc, node: RunningNode) -> None:
    orthanc.post("/modalities/srnode/move", {
        "Level": "Series", "TargetAet": "ORTHANC",
        "Resources": [{"StudyInstanceUID": node.studies[LUNG], "SeriesInstanceUID": node.series[LUNG]}],
    })
    found = orthanc.post("/tools/find", {"Level": "Instance", "Expand": True,
                                         "Query": {"SeriesInstanceUID": node.series[LUNG]}})
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in found} == node.sop_uids[LUNG]


def test_orthanc_move_to_unknown_destination_fails(orthanc: Orthanc, node: RunningNode) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        orthanc.post("/modalities/srnode/move", {
            "Level": "Study", "TargetAet": "NOSUCHAE", "Resources": [{"StudyInstanceUID": node.studies[LUNG]}],
        })
    body = info.value.read().decode()
    assert "0xa801" in body.lower(), body
