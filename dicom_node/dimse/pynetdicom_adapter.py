"""Every use of pynetdicom's internals in srnode, behind small functions, with a version guard.

srnode streams C-STORE sub-operations and outbox deliveries past pynetdicom's state machine
(dicom_node.dimse.fast_store) and throttles the Pending responses of its C-MOVE/C-GET SCP
(dicom_node.qr.handlers). Both need pynetdicom's private attributes (the reactor's checkpoint,
the DUL's transport poll, loop delay and idle timer, the DIMSE provider's `send_msg`, the
association's response checks) and methods replaced on live objects; the SO_REUSEPORT listener
(dicom_node.listener) registers its server in the AE's private list of servers. Those names appear here
and nowhere else; the rest of srnode uses pynetdicom's public API.

The names were read in pynetdicom 3.0.4 (`TESTED_VERSIONS`, pinned exactly in setup.cfg).
`check_version()` runs when the node starts (dicom_node.server.NodeServer.start): a node with
another pynetdicom refuses to start instead of misbehaving on the wire. Upgrading pynetdicom:
re-read the attributes used below in the new version, run tests/dimse, tests/qr and tests/outbox
(the adapter's own test is tests/dimse/test_pynetdicom_adapter.py), then add the version here and
change the pin.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pynetdicom
from pydicom.dataset import Dataset
from pynetdicom.association import Association

TESTED_VERSIONS = ("3.0.4",)

# Attributes srnode sets on pynetdicom's Association objects (its own markers).
_FAST_STORE_MARK = "_srnode_fast_store"
_READS_MARK = "_srnode_reads"


class UntestedPynetdicom(RuntimeError):
    """The installed pynetdicom is not a version this adapter was written and tested against."""


def check_version(found: str | None = None) -> None:
    """Raise UntestedPynetdicom unless `found` (default: the installed pynetdicom) is a tested version."""
    found = pynetdicom.__version__ if found is None else found
    if found not in TESTED_VERSIONS:
        tested = ", ".join(TESTED_VERSIONS)
        raise UntestedPynetdicom(
            f"srnode's pynetdicom adapter (dicom_node/dimse/pynetdicom_adapter.py) is tested with pynetdicom "
            f"{tested}; found {found}. Install pynetdicom=={TESTED_VERSIONS[-1]} (the version setup.cfg pins)."
        )


# --- the association's connection ------------------------------------------------------------------
def register_server(ae: Any, server: Any) -> None:
    """Add a server started outside `AE.start_server` (`AE.make_server` + our own thread) to the AE's
    servers, as start_server does, so that `AE.shutdown()` stops it and `server.shutdown()`
    deregisters it."""
    ae._servers.append(server)


def raw_socket(assoc: Association) -> socket.socket:
    """The association's TCP (or TLS) socket, for writing PDUs without pynetdicom's DUL thread."""
    return cast(socket.socket, cast(Any, assoc.dul.socket).socket)


def maximum_pdu_size(assoc: Association) -> int:
    """The largest P-DATA-TF PDU the peer accepts (0: no limit)."""
    return int(assoc.dimse.maximum_pdu_size or 0)


def restart_idle_timer(assoc: Association) -> None:
    """Tell the DUL that a PDU arrived (its network timeout counts from the last one it saw)."""
    assoc.dul._idle_timer.restart()


def pause_reactor(assoc: Association) -> None:
    """Keep the association's own reactor thread off the DIMSE queue while we wait for responses.

    Requester side (C-MOVE sub-association, outbox): the reactor is paused once and left paused,
    since only our C-STOREs use that association (release() and kill() resume it). Resuming it
    between instances, as Association.send_c_store does, races: the reactor may take the next
    C-STORE-RSP before the stale "paused" flag is updated. Acceptor side (C-GET): the handler
    runs on the reactor thread itself, which pynetdicom has already marked paused.
    """
    if assoc.is_requestor and assoc._reactor_checkpoint.is_set():
        assoc._reactor_checkpoint.clear()
        time.sleep(0.005)  # one reactor loop (1 ms sleep) to notice the cleared checkpoint
        while not assoc._is_paused:
            time.sleep(0.0001)


def read_on_caller_thread(assoc: Association) -> None:
    """Requester side: let the caller read C-STORE-RSPs from `raw_socket` instead of pynetdicom's DUL thread.

    Waiting for each response through the DUL thread (poll, decode, queue, wake us) cost more
    than sending the instance. Only C-STORE-RSPs arrive on a sub-association, so once it is
    established the DUL thread is told there is never anything to read, and `release()` or
    `abort()` give the socket back before pynetdicom negotiates the end of the association.
    Does nothing on the acceptor side (C-GET) or when already done.
    """
    if reads_on_caller_thread(assoc) or not assoc.is_requestor:
        return
    dul: Any = assoc.dul
    dul._is_transport_event = lambda: False  # shadows the method the DUL loop calls
    delay, dul._run_loop_delay = dul._run_loop_delay, 0.01  # nothing for it to do meanwhile
    time.sleep(0.002)  # let a loop iteration already inside the real method finish
    setattr(assoc, _READS_MARK, True)
    release, abort = assoc.release, assoc.abort

    def give_back() -> None:
        if getattr(assoc, _READS_MARK):
            del dul._is_transport_event
            dul._run_loop_delay = delay
            setattr(assoc, _READS_MARK, False)

    def release_() -> None:
        give_back()
        release()

    def abort_() -> None:
        give_back()
        abort()

    live: Any = assoc  # instance attributes that shadow the class's methods
    live.release, live.abort = release_, abort_


def reads_on_caller_thread(assoc: Association) -> bool:
    """Whether `read_on_caller_thread` has taken the responses of this association from the DUL."""
    return bool(getattr(assoc, _READS_MARK, False))


def receive_response_status(assoc: Association) -> Dataset:
    """Wait for the next DIMSE response through pynetdicom's queue, as `send_c_store` does.

    Returns the response's status data set, or an empty one when none came (pynetdicom has then
    logged it and aborted the association if it was still established).
    """
    _, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)


def wait_until_sent(assoc: Association, timeout_s: float = 10.0) -> None:
    """Wait until pynetdicom's DUL has sent every queued PDU, so that it reads the socket again.

    The DUL reads incoming PDUs only when it has nothing left to send. A C-FIND handler that
    queues responses faster than they go out would therefore never see the requester's C-CANCEL
    (measured: all 1000 of 1000 matches sent, 1 run in 3). Draining now and then bounds that.
    """
    pending = assoc.dul.to_provider_queue
    deadline = time.monotonic() + timeout_s
    while pending.qsize() and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0005)


# --- methods replaced on live objects ------------------------------------------------------------
@contextmanager
def dropping_sent_messages(assoc: Association, drop: Callable[[Any], bool]) -> Iterator[None]:
    """While the block runs, DIMSE messages (primitives) for which `drop(primitive)` is true are not sent."""
    dimse: Any = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if drop(primitive):
            return
        original(primitive, context_id)

    dimse.send_msg = send_msg
    try:
        yield
    finally:
        del dimse.send_msg  # back to the class's method


# send_c_store(dataset, msg_id, priority, originator_aet, originator_id) -> status
SendCStore = Callable[[Any, int, int, "str | None", "int | None"], Dataset]


def wrap_send_c_store(assoc: Association, send: Callable[[SendCStore, Any, int, int, str | None, int | None],
                                                         Dataset]) -> None:
    """Route this association's `send_c_store` through `send(original, dataset, msg_id, ...)`.

    pynetdicom's C-MOVE/C-GET SCP calls `assoc.send_c_store` for every data set a handler yields;
    replacing it on the one Association object (a C-MOVE sub-association, the requester's
    association of a C-GET, an outbox association) changes nothing else. Once per association.
    """
    if getattr(assoc, _FAST_STORE_MARK, False):
        return
    original = assoc.send_c_store

    def call_original(dataset: Any, msg_id: int, priority: int, originator_aet: str | None,
                      originator_id: int | None) -> Dataset:
        return original(dataset, msg_id=msg_id, priority=priority, originator_aet=originator_aet,
                        originator_id=originator_id)

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        return send(call_original, dataset, msg_id, priority, originator_aet, originator_id)

    live: Any = assoc  # an instance attribute that shadows the class's method
    live.send_c_store = send_c_store
    setattr(assoc, _FAST_STORE_MARK, True)
