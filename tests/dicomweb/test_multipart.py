"""multipart/related reading and writing (dicom_node.multipart), however the body is chunked."""
from __future__ import annotations

import pytest

from dicom_node.multipart import MediaType, MultipartError, MultipartReader, accept_list, write_parts

PARTS = [("application/dicom", b"\x00" * 300 + b"\r\n--not-the-boundary\r\n"), ("text/plain", b""),
         ("application/dicom", bytes(range(256)) * 40)]


def _read(body: bytes, step: int, boundary: str = "b0undary") -> list[tuple[str, bytes]]:
    reader = MultipartReader(boundary)
    out = []
    for at in range(0, len(body), step):
        out += [(p.content_type.type, p.body) for p in reader.feed(body[at:at + step])]
    reader.finish()
    return out


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_parts_come_back_whatever_the_chunking(step: int) -> None:
    body = b"".join(write_parts(PARTS, "b0undary"))
    assert _read(body, step) == PARTS


def test_preamble_epilogue_and_header_parameters() -> None:
    body = b"preamble\r\n" + b"".join(write_parts(PARTS[:1], "b0undary")) + b"epilogue"
    assert _read(body, 5) == PARTS[:1]
    media = MediaType.parse('multipart/related; type="application/dicom"; boundary="a;b"')
    assert media.type == "multipart/related" and media.params == {"type": "application/dicom", "boundary": "a;b"}
    assert [m.type for m in accept_list('multipart/related; type="application/dicom", */*')] == \
        ["multipart/related", "*/*"]


def test_a_body_without_its_closing_delimiter_is_an_error() -> None:
    body = b"".join(write_parts(PARTS, "b0undary"))
    with pytest.raises(MultipartError):
        _read(body[:-len(b"--b0undary--\r\n")], 64)
    with pytest.raises(MultipartError):
        MultipartReader("")


def test_a_part_over_the_limit_is_an_error() -> None:
    reader = MultipartReader("b0undary", max_part_bytes=1000)
    with pytest.raises(MultipartError):
        reader.feed(b"".join(write_parts(PARTS[2:], "b0undary"))[:5000])
