"""C-MOVE details a DCMTK command line can't steer: cancel mid-move, partial failure, on-demand series."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from dicom_node.derive.uids import derived_series_uid, derived_sop_uid
from dicom_node.ingest import store_dataset
from dicom_node.qr.on_demand import ProducedInstance, VirtualSeries
from dicom_node.storage import resolve_in
from tests.qr.conftest import NODE_AE, SCU_AE, RunningNode
from tests.qr.synthetic import ROOT, make_instance

pytestmark = pytest.mark.integration
LUNG = "lung-pet-ct-dx_Lung_Dx-A0002_chest"


class Destination:
    """A pynetdicom storage SCP (peer "slow", AE SLOWSCP) that records what it receives."""

    def __init__(self, port: int, delay_s: float = 0.0) -> None:
        self.received: list[str] = []
        self.delay_s = delay_s
        self.abort_after: int | None = None
        ae = AE("SLOWSCP")
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        time.sleep(self.delay_s)
        if self.abort_after is not None and len(self.received) >= self.abort_after:
            event.assoc.abort()
            return 0xA700
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000


@pytest.fixture
def destination(node: RunningNode) -> Iterator[Destination]:
    dest = Destination(node.slow_port)
    yield dest
    dest.server.shutdown()


def associate(node: RunningNode, *contexts: str, roles: bool = False) -> Any:
    ae = AE(SCU_AE)
    for cx in contexts:
        ae.add_requested_context(cx)
    ext = []
    if roles:
        ae.add_requested_context(CTImageStorage)
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = CTImageStorage
        role.scu_role, role.scp_role = False, True
        ext = [role]
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE, ext_neg=ext)
    assert assoc.is_established
    return assoc


def series_identifier(series_uid: str, level: str = "SERIES") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.SeriesInstanceUID = series_uid
    return ds


def test_move_partial_failure_lists_failed_instances(node: RunningNode, destination: Destination,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    study, series = f"{ROOT}700", f"{ROOT}700.1"
    rel_paths = []
    for n in range(1, 5):
        ds = make_instance("PARTIAL^FAIL", "PPF", study, series_uid=series, sop_uid=f"{series}.{n}", instance_number=n)
        rel_paths.append(store_dataset(node.server.session_factory, node.server.storage_dir, ds, "TESTSCU").rel_path)
    resolve_in(node.server.storage_dir, rel_paths[1]).unlink()  # lost on disk after being indexed
    assoc = associate(node, MOVE)
    try:
        responses = list(assoc.send_c_move(series_identifier(series), "SLOWSCP", MOVE))
    finally:
        assoc.release()
    final_status, final_identifier = responses[-1]
    assert final_status.Status == 0xB000
    assert final_status.NumberOfCompletedSuboperations == 3 and final_status.NumberOfFailedSuboperations == 1
    assert final_identifier.FailedSOPInstanceUIDList == f"{series}.2"
    assert sorted(destination.received) == [f"{series}.1", f"{series}.3", f"{series}.4"]
    assert sum("unreadable" in r.getMessage() for r in caplog.records if r.name == "srnode.qr") == 1


def test_move_cancel(node: RunningNode, destination: Destination) -> None:
    destination.delay_s = 0.2  # a slow destination, so the cancel arrives mid-move
    assoc = associate(node, MOVE)
    statuses = []
    try:
        for status, _ in assoc.send_c_move(series_identifier(node.series[LUNG]), "SLOWSCP", MOVE):
            statuses.append(status)
            if status.Status == 0xFF00 and len(statuses) == 2:
                move_context = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == MOVE)
                assoc.send_c_cancel(1, move_context)
    finally:
        assoc.release()
    final = statuses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert 2 <= len(destination.received) < 30
    assert final.NumberOfCompletedSuboperations == len(destination.received)


def test_destination_aborting_mid_move(node: RunningNode, destination: Destination,
                                       caplog: pytest.LogCaptureFixture) -> None:
    destination.abort_after = 3
    assoc = associate(node, MOVE)
    try:
        responses = list(assoc.send_c_move(series_identifier(node.series[LUNG]), "SLOWSCP", MOVE))
        final_status, final_identifier = responses[-1]
        assert final_status.Status == 0xB000  # some completed, the rest failed
        assert final_status.NumberOfCompletedSuboperations == 3
        assert final_status.NumberOfFailedSuboperations == 27
        assert len(final_identifier.FailedSOPInstanceUIDList) == 27
        assert set(final_identifier.FailedSOPInstanceUIDList) | set(destination.received) == node.sop_uids[LUNG]
        # the node still serves the next move on the same association
        destination.abort_after, destination.received = None, []
        responses = list(assoc.send_c_move(series_identifier(node.series[LUNG]), "SLOWSCP", MOVE))
        assert responses[-1][0].Status == 0x0000 and len(destination.received) == 30
    finally:
        assoc.release()
    assert sum("aborted" in r.getMessage() for r in caplog.records if r.name == "srnode.qr") == 1


class ProducingProvider:
    """Test double for the pipeline's side of the on-demand contract (dicom_node.qr.on_demand).

    The virtual series of a source is a copy of it under the derived UID, written through
    dicom_node.ingest while the retrieve runs, one instance at a time, with a delay, so that
    the test can see instances being sent as they are produced.
    """

    def __init__(self, node: RunningNode, source_series_uid: str, storage_dir: Path) -> None:
        self.node = node
        self.source = source_series_uid
        self.uid = derived_series_uid(source_series_uid, "demo", "", 2)
        self.storage_dir = storage_dir
        self.produced_at: list[float] = []
        self.runs = 0

    def _virtual(self) -> VirtualSeries:
        return VirtualSeries(self.uid, self.source, "CT", "SRx2 demo: copy", 1002, 3, "demo")

    def virtual_series(self, session: Any, source_series_uids: list[str]) -> list[VirtualSeries]:
        return [self._virtual()] if self.source in source_series_uids else []

    def lookup(self, session: Any, series_uid: str) -> VirtualSeries | None:
        return self._virtual() if series_uid == self.uid else None

    def materialise(self, series_uid: str) -> Iterator[ProducedInstance]:
        self.runs += 1
        for n in range(1, 4):
            time.sleep(0.3)
            ds = dcmread(sorted(self.storage_dir.rglob("*.dcm"))[0])
            ds.SeriesInstanceUID = self.uid
            ds.SOPInstanceUID = derived_sop_uid(f"{self.source}.{n}", "demo", "", 2)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesDescription = "SRx2 demo: copy"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            result = store_dataset(self.node.server.session_factory, self.node.server.storage_dir, ds, "", 99)
            self.produced_at.append(time.monotonic())
            yield ProducedInstance(resolve_in(self.node.server.storage_dir, result.rel_path), ds.SOPInstanceUID)


def test_on_demand_series_found_then_retrieved_as_produced(node: RunningNode, destination: Destination) -> None:
    service = node.server.context.qr
    source_dir = node.server.storage_dir / node.studies[LUNG] / node.series[LUNG]
    provider = ProducingProvider(node, node.series[LUNG], source_dir)
    old, service.provider = service.provider, provider
    try:
        assoc = associate(node, StudyRootQueryRetrieveInformationModelFind, MOVE, GET, roles=True)
        try:
            query = series_identifier("")
            query.StudyInstanceUID = node.studies[LUNG]
            query.SeriesDescription = ""
            query.NumberOfSeriesRelatedInstances = ""
            found = [ds for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                     if status.Status == 0xFF00]
            virtual = next(ds for ds in found if ds.SeriesInstanceUID == provider.uid)
            assert virtual.SeriesDescription == "SRx2 demo: copy" and virtual.NumberOfSeriesRelatedInstances == 3

            arrived: list[float] = []
            real_store = destination._on_store

            def stamp(event: evt.Event) -> int:
                arrived.append(time.monotonic())
                return real_store(event)

            destination._on_store = stamp  # type: ignore[method-assign]
            destination.server.unbind(evt.EVT_C_STORE, real_store)
            destination.server.bind(evt.EVT_C_STORE, stamp)
            responses = list(assoc.send_c_move(series_identifier(provider.uid), "SLOWSCP", MOVE))
            assert responses[-1][0].Status == 0x0000 and responses[-1][0].NumberOfCompletedSuboperations == 3
            assert sorted(destination.received) == sorted(derived_sop_uid(f"{provider.source}.{n}", "demo", "", 2)
                                                          for n in (1, 2, 3))
            # streamed: the first instance arrived before the last one was produced
            assert arrived[0] < provider.produced_at[-1]

            # now produced: the index answers, and a C-GET is served from the local store
            got: list[str] = []
            assoc.bind(evt.EVT_C_STORE, lambda e: got.append(str(e.dataset.SOPInstanceUID)) or 0x0000)
            responses = list(assoc.send_c_get(series_identifier(provider.uid), GET))
            assert responses[-1][0].Status == 0x0000 and sorted(got) == sorted(destination.received)
            assert provider.runs == 1
        finally:
            assoc.release()
    finally:
        service.provider = old
