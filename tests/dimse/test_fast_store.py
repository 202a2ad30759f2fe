"""The directly encoded C-STORE-RQ command set is byte for byte what pynetdicom encodes."""
from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicom_node.dimse.fast_store import c_store_rq_command


@pytest.mark.parametrize(("aet", "orig_id"), [(None, None), ("MOVER", 7), ("ODDAE", 65535)])
@pytest.mark.parametrize("sop", ["1.2.840.10008.5.1.4.1.1.2", "1.2.3.45"])
def test_command_matches_pynetdicom(aet: str | None, orig_id: int | None, sop: str) -> None:
    req = C_STORE()
    req.MessageID = 12
    req.AffectedSOPClassUID = sop
    req.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.10.1235.1.2.3"
    req.Priority = 2
    req.MoveOriginatorApplicationEntityTitle = aet
    req.MoveOriginatorMessageID = orig_id
    req.DataSet = BytesIO(b"\x00")
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    expected = encode(msg.command_set, True, True)
    assert c_store_rq_command(sop, "1.2.826.0.1.3680043.10.1235.1.2.3", 12, 2, aet, orig_id) == expected
