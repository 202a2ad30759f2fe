"""dicom_node.dimse.pynetdicom_adapter: the version guard, the one home of pynetdicom's private
names, and its functions on a real association (a pynetdicom storage SCP on loopback)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from dicom_node.dimse import fast_store, pynetdicom_adapter
from dicom_node.dimse.pynetdicom_adapter import TESTED_VERSIONS, UntestedPynetdicom, check_version
from dicom_node.wiring import build_node
from tests.conftest import REPO_ROOT
from tests.dicom_node.conftest import node_config
from tests.library_internals import uses_outside
from tests.qr.synthetic import make_instance

# pynetdicom internals srnode uses (and methods it replaces on live objects): each may appear only
# in the adapter. Add a name here when the adapter starts using one.
PRIVATE = re.compile(r"\b(_reactor_checkpoint|_is_paused|_is_transport_event|_run_loop_delay|_idle_timer|"
                     r"_handle_no_response|_check_received_status|to_provider_queue|_servers)\b"
                     r"|\.(send_msg|send_c_store|release|abort)\s*=[^=]")
ADAPTER = REPO_ROOT / "dicom_node" / "dimse" / "pynetdicom_adapter.py"


def test_an_untested_version_is_refused_with_what_to_install() -> None:
    with pytest.raises(UntestedPynetdicom, match=r"tested with pynetdicom 3\.0\.4; found 3\.1\.0\. "
                                                 r"Install pynetdicom==3\.0\.4"):
        check_version("3.1.0")


def test_the_installed_version_is_tested_and_pinned_exactly() -> None:
    check_version()
    assert pynetdicom.__version__ in TESTED_VERSIONS
    pins = re.findall(r"^\s*pynetdicom==(\S+)\s*$", (REPO_ROOT / "setup.cfg").read_text(encoding="utf-8"), re.M)
    assert pins == [TESTED_VERSIONS[-1]]


def test_the_node_refuses_to_start_on_an_untested_pynetdicom(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    node = build_node(node_config(tmp_path, f"sqlite:///{tmp_path / 'index.db'}"), services=[])
    monkeypatch.setattr(pynetdicom, "__version__", "2.0.2")
    try:
        with pytest.raises(UntestedPynetdicom, match="found 2.0.2"):
            node.start()
        assert node.server is None  # nothing listens
    finally:
        node.engine.dispose()


def test_pynetdicom_private_names_appear_only_in_the_adapter() -> None:
    assert uses_outside(PRIVATE, ADAPTER) == []
    assert PRIVATE.search(ADAPTER.read_text(encoding="utf-8"))  # the pattern still matches what it guards


# --- on a real association ------------------------------------------------------------------------
@pytest.fixture
def scp() -> Iterator[tuple[int, list[Dataset]]]:
    """A pynetdicom storage (and verification) SCP on loopback; yields its port and what it received."""
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="ADAPTER_SCP")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None
    try:
        yield int(server.server_address[1]), received
    finally:
        server.shutdown()


def _associate(port: int) -> Association:
    ae = AE(ae_title="ADAPTER_SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ADAPTER_SCP")
    assert assoc.is_established
    return assoc


def test_a_stored_file_is_streamed_and_the_association_given_back_on_release(
        tmp_path: Path, scp: tuple[int, list[Dataset]]) -> None:
    port, received = scp
    instance = make_instance(study_uid="1.2.826.0.1.3680043.10.1234.9", size=64)
    path = tmp_path / "ct.dcm"
    instance.save_as(path, enforce_file_format=True)
    assoc = _associate(port)
    try:
        fast_store.install(assoc)
        installed = assoc.send_c_store
        fast_store.install(assoc)  # once per association
        assert assoc.send_c_store is installed
        stored = fast_store.StoredFile(CTImageStorage, instance.SOPInstanceUID, ExplicitVRLittleEndian, path)
        for _ in range(2):
            assert assoc.send_c_store(stored).Status == 0x0000
        # The requester's responses were read on this thread, past pynetdicom's DUL.
        assert pynetdicom_adapter.reads_on_caller_thread(assoc)
        assert pynetdicom_adapter.maximum_pdu_size(assoc) > 0
        assert pynetdicom_adapter.raw_socket(assoc).fileno() != -1
    finally:
        assoc.release()
    assert assoc.is_released
    assert not pynetdicom_adapter.reads_on_caller_thread(assoc)  # the DUL had its socket back to release
    assert [ds.SOPInstanceUID for ds in received] == [instance.SOPInstanceUID] * 2
    assert received[0].PixelData == dcmread(path).PixelData


def test_the_internals_the_adapter_uses_exist_on_a_live_association(scp: tuple[int, list[Dataset]]) -> None:
    # Shadowing a name that a new pynetdicom renamed would silently do nothing: check them all.
    assoc = _associate(scp[0])
    try:
        for owner, names in ((assoc, ["_reactor_checkpoint", "_is_paused", "_handle_no_response",
                                      "_check_received_status", "send_c_store", "release", "abort"]),
                             (assoc.dul, ["_is_transport_event", "_run_loop_delay", "_idle_timer",
                                          "to_provider_queue", "socket"]),
                             (assoc.dimse, ["send_msg", "get_msg", "maximum_pdu_size"])):
            assert [n for n in names if not hasattr(owner, n)] == [], type(owner).__name__
        assert callable(type(assoc.dul)._is_transport_event)
        assert hasattr(assoc.dul._idle_timer, "restart")
    finally:
        assoc.release()


def test_dropped_messages_are_not_sent_and_send_msg_is_restored(scp: tuple[int, list[Dataset]]) -> None:
    port, _ = scp
    assoc = _associate(port)
    seen: list[str] = []

    def keep(primitive: object) -> bool:
        seen.append(type(primitive).__name__)
        return False

    try:
        with pynetdicom_adapter.dropping_sent_messages(assoc, keep):
            assert assoc.send_c_echo().Status == 0x0000
            pynetdicom_adapter.wait_until_sent(assoc, timeout_s=5)  # returns once the DUL has sent it all
        assert "send_msg" not in vars(assoc.dimse)  # back to the class's method
        assert seen == ["C_ECHO"]
        echo = C_ECHO()
        echo.MessageID = 7
        echo.AffectedSOPClassUID = Verification
        with pynetdicom_adapter.dropping_sent_messages(assoc, lambda primitive: primitive is echo):
            assoc.dimse.send_msg(echo, 1)  # dropped: no request, so no response to wait for
        assert assoc.send_c_echo().Status == 0x0000  # and the association goes on as before
    finally:
        assoc.release()
    assert assoc.is_released


def test_a_server_started_outside_start_server_is_stopped_by_the_ae() -> None:
    # The SO_REUSEPORT listener starts its server itself (dicom_node.listener); registered through
    # the adapter, AE.shutdown() stops it as it stops the servers of AE.start_server.
    import threading

    from tests.conftest import free_port

    ae = AE()
    ae.add_supported_context(Verification)
    server = ae.make_server(("127.0.0.1", free_port()), evt_handlers=[])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pynetdicom_adapter.register_server(ae, server)
    ae.shutdown()
    thread.join(5)
    assert not thread.is_alive()
