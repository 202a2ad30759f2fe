"""C-STORE sub-operations that stream the stored file's bytes instead of decoding and re-encoding it.

pynetdicom's `send_c_store` decodes nothing when given a path, but still pushes every P-DATA PDU
through its state machine thread, one queue hand-off per 16 KiB; for a 512x512 CT slice that is
~32 round trips through Python per instance and caps a C-MOVE at ~100 instances/s on loopback.
Here the small C-STORE-RQ command set is encoded directly (byte-identical to pynetdicom's, see
tests/dimse/test_fast_store.py), the data set PDUs are framed straight from the file (PS3.8 9.3.5:
P-DATA-TF, one PDV per PDU) and written to the association's socket in one call, and the response is read back through
pynetdicom's DIMSE queue, as `send_c_store` does. When the file's transfer syntax was not
accepted for its SOP class, the instance is read with pydicom and handed to pynetdicom's own
`send_c_store`, which converts between the uncompressed syntaxes; compressed data is
decompressed first if the peer accepted only uncompressed syntaxes.

`install(assoc)` replaces `send_c_store` on one Association object (a sub-association opened for
a C-MOVE, the requester's association of a C-GET, or an outbox association); pynetdicom's
C-MOVE/C-GET SCP then calls it for every `StoredFile` the Q/R handler yields, the outbox sender for
every row it delivers. What this needs of pynetdicom's internals (the raw socket, the paused
reactor, responses read on this thread, the method replaced) is in
dicom_node.dimse.pynetdicom_adapter, with its version guard; the PDUs framed here are PS3.8's.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset

from dicom_node.dimse import pynetdicom_adapter

log = logging.getLogger("srnode.qr")

_PDU_HEADER = struct.Struct(">BBIIBB")  # PDU type, reserved, PDU length, PDV length, context ID, control
_LAST_DATA_FRAGMENT = 0x02


class StoredFile(Dataset):
    """What the Q/R handler yields per instance: the UIDs pynetdicom tracks, and where the bytes are."""

    def __init__(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, path: Path) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        # Plain attributes (not DICOM keywords): pydicom keeps them off the element dictionary.
        self.srnode_path = path
        self.srnode_syntax = UID(transfer_syntax_uid or ExplicitVRLittleEndian)
        self.srnode_bytes: Future[bytes] | None = None  # set by read_ahead



def _context_for(assoc: Any, sop_class: str, syntax: str) -> Any:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax and cx.as_scu:
            return cx
    return None


def _frames(context_id: int, body: memoryview, max_pdu: int) -> list[bytes | memoryview]:
    """The data set as P-DATA-TF PDUs (header, slice of the file, ...), one PDV each, the last flagged."""
    step = max_pdu - 6 if max_pdu else max(len(body), 1)
    out: list[bytes | memoryview] = []
    for start in range(0, max(len(body), 1), step):
        chunk = body[start:start + step]
        last = start + step >= len(body)
        out.append(_PDU_HEADER.pack(0x04, 0, len(chunk) + 6, len(chunk) + 2, context_id,
                                    _LAST_DATA_FRAGMENT if last else 0x00))
        out.append(chunk)
    return out


def _send_buffers(sock: Any, buffers: list[bytes | memoryview]) -> None:
    """Write the buffers in order with scatter/gather I/O (no copy of the file into one message)."""
    if not hasattr(sock, "sendmsg") or type(sock).__name__ == "SSLSocket":  # TLS: no sendmsg
        sock.sendall(b"".join(buffers))
        return
    pending = [memoryview(b) for b in buffers]
    while pending:
        sent = sock.sendmsg(pending[:512])  # stay below IOV_MAX (1024)
        while sent and pending:
            if sent >= len(pending[0]):
                sent -= len(pending.pop(0))
            else:
                pending[0] = pending[0][sent:]
                sent = 0


def _element(element: int, value: bytes) -> bytes:
    """One command-group element, Implicit VR Little Endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def c_store_rq_command(sop_class: str, sop_instance: str, msg_id: int, priority: int,
                       originator_aet: str | None, originator_id: int | None) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), data set present, as pynetdicom encodes it."""
    body = [
        _element(0x0002, _text(sop_class, b"\x00")),
        _element(0x0100, struct.pack("<H", 0x0001)),
        _element(0x0110, struct.pack("<H", msg_id)),
        _element(0x0700, struct.pack("<H", priority)),
        _element(0x0800, struct.pack("<H", 0x0001)),
        _element(0x1000, _text(sop_instance, b"\x00")),
    ]
    if originator_aet:
        body.append(_element(0x1030, _text(originator_aet.strip(), b" ")))
    if originator_id is not None:
        body.append(_element(0x1031, struct.pack("<H", originator_id)))
    joined = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(joined))) + joined


def _command(cx_id: int, ds: StoredFile, max_pdu: int, msg_id: int, priority: int,
             originator_aet: str | None, originator_id: int | None) -> bytes:
    command = c_store_rq_command(str(ds.SOPClassUID), str(ds.SOPInstanceUID), msg_id, priority,
                                 originator_aet, originator_id)
    out = bytearray()
    step = max_pdu - 6 if max_pdu else len(command)
    for start in range(0, len(command), step):
        chunk = command[start:start + step]
        last = start + step >= len(command)
        out += _PDU_HEADER.pack(0x04, 0, len(chunk) + 6, len(chunk) + 2, cx_id, 0x03 if last else 0x01)
        out += chunk
    return bytes(out)


def _meta_end(data: bytes, path: Path) -> int:
    """Offset of the data set in a Part 10 file: after File Meta Information Group Length's group."""
    # 128-byte preamble, "DICM", then (0002,0000) UL explicit VR: tag 4 + VR 2 + length 2 + value 4.
    if data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL":
        return 144 + struct.unpack_from("<I", data, 140)[0]
    return split_dataset(path)[1]  # no group length: let pydicom walk the meta group


def read_ahead(files: Iterator[StoredFile]) -> Iterator[StoredFile]:
    """Start reading each file's bytes in a helper thread one item ahead, while the previous one is sent."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qr-read") as pool:
        current = next(files, None)
        if current is not None:
            current.srnode_bytes = pool.submit(current.srnode_path.read_bytes)
        while current is not None:
            following = next(files, None)
            if following is not None:
                following.srnode_bytes = pool.submit(following.srnode_path.read_bytes)
            yield current
            current = following


def _read(ds: StoredFile) -> memoryview:
    """The file's data set bytes (after the File Meta Information)."""
    try:
        data = ds.srnode_bytes.result() if ds.srnode_bytes is not None else ds.srnode_path.read_bytes()
        return memoryview(data)[_meta_end(data, ds.srnode_path):]
    except OSError as exc:
        # pynetdicom counts the failure and lists the SOP Instance UID; this is our one line.
        log.warning("retrieve: stored file of instance %s unreadable (%s)", ds.SOPInstanceUID, type(exc).__name__)
        raise


def _recv_exact(sock: Any, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:])
        if not count:
            raise ConnectionError("the destination closed the connection")
        got += count
    return buf


def status_from_command(command: bytes | bytearray) -> Dataset:
    """Status (and ErrorComment) of a C-STORE-RSP command set (Implicit VR Little Endian)."""
    status = Dataset()
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, pos)
        value = command[pos + 8:pos + 8 + length]
        pos += 8 + length
        if group != 0x0000:
            continue
        if element == 0x0900:
            status.Status = struct.unpack("<H", value)[0]
        elif element == 0x0902:
            status.ErrorComment = bytes(value).decode("ascii", "replace").rstrip(" \x00")
    if "Status" not in status:
        raise ValueError("C-STORE-RSP without a Status")
    return status


def _read_response(assoc: Any) -> Dataset:
    """Read P-DATA-TF PDUs until the last command fragment; return the response's status."""
    sock = pynetdicom_adapter.raw_socket(assoc)
    previous = sock.gettimeout()
    sock.settimeout(assoc.dimse_timeout)
    command = bytearray()
    try:
        while True:
            pdu_type, _, length = struct.unpack(">BBI", _recv_exact(sock, 6))
            body = _recv_exact(sock, length)
            if pdu_type != 0x04:
                raise ConnectionError(f"the destination sent PDU type 0x{pdu_type:02X} instead of a C-STORE-RSP")
            pos = 0
            while pos < length:
                item_length = struct.unpack_from(">I", body, pos)[0]
                control = body[pos + 5]
                if control & 0x01:  # command fragment; a C-STORE-RSP has no data set
                    command += body[pos + 6:pos + 4 + item_length]
                    if control & 0x02:
                        pynetdicom_adapter.restart_idle_timer(assoc)
                        return status_from_command(command)
                pos += 4 + item_length
    except (OSError, ValueError) as exc:
        log.warning("C-MOVE sub-association to %s aborted: %s", assoc.acceptor.ae_title, exc)
        assoc.abort()
        raise
    finally:
        if sock.fileno() != -1:
            sock.settimeout(previous)


def _send_file(assoc: Any, cx: Any, ds: StoredFile, msg_id: int, priority: int,
               originator_aet: str | None, originator_id: int | None) -> Dataset:
    if not assoc.is_established:
        raise ConnectionError("the association to the destination is gone")
    body = _read(ds)
    max_pdu = pynetdicom_adapter.maximum_pdu_size(assoc)
    buffers: list[bytes | memoryview] = [_command(cx.context_id, ds, max_pdu, msg_id, priority, originator_aet,
                                                  originator_id)]
    buffers += _frames(cx.context_id, body, max_pdu)
    pynetdicom_adapter.pause_reactor(assoc)
    pynetdicom_adapter.read_on_caller_thread(assoc)
    _send_buffers(pynetdicom_adapter.raw_socket(assoc), buffers)
    if pynetdicom_adapter.reads_on_caller_thread(assoc):
        return _read_response(assoc)
    # C-GET: the requester's DUL thread reads as usual
    return pynetdicom_adapter.receive_response_status(assoc)


def _as_dataset(assoc: Any, ds: StoredFile) -> Dataset:
    """The stored file read with pydicom, decompressed if the peer only takes uncompressed data."""
    try:
        full = dcmread(ds.srnode_path)
    except OSError as exc:
        log.warning("retrieve: stored file of instance %s unreadable (%s)", ds.SOPInstanceUID, type(exc).__name__)
        raise
    ts = full.file_meta.get("TransferSyntaxUID")
    if ts is not None and ts.is_compressed:
        uncompressed = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        if not _context_for(assoc, ds.SOPClassUID, ts) and any(
                _context_for(assoc, ds.SOPClassUID, s) for s in uncompressed):
            # pydicom 3 would give the decompressed copy a new SOP Instance UID by default: the
            # peer must receive the instance it was sent, under its own UID.
            full.decompress(generate_instance_uid=False)
    return full


def install(assoc: Any) -> None:
    """Make `assoc.send_c_store` stream StoredFile items (other datasets go to pynetdicom as before)."""

    def send_c_store(original: pynetdicom_adapter.SendCStore, dataset: Any, msg_id: int, priority: int,
                     originator_aet: str | None, originator_id: int | None) -> Dataset:
        if isinstance(dataset, StoredFile):
            cx = _context_for(assoc, dataset.SOPClassUID, dataset.srnode_syntax)
            if cx is not None:
                return _send_file(assoc, cx, dataset, msg_id, priority, originator_aet, originator_id)
            dataset = _as_dataset(assoc, dataset)
        return original(dataset, msg_id, priority, originator_aet, originator_id)

    pynetdicom_adapter.wrap_send_c_store(assoc, send_c_store)
