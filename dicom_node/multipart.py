"""multipart/related (RFC 2387) for DICOMweb: media type parameters, an incremental reader for
STOW-RS request bodies (one part in memory at a time), and a writer for WADO-RS responses and
outgoing STOW-RS requests. Below both the DICOMweb server (dicom_node.dicomweb) and the outbox."""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

CRLF = b"\r\n"
MAX_BOUNDARY = 256


class MultipartError(ValueError):
    """A body that is not the multipart/related it says it is (the message says where)."""


@dataclass(frozen=True)
class MediaType:
    """`type/subtype; name=value; ...`, lower-cased type and parameter names, quotes removed."""

    type: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> MediaType:
        head, *rest = _split_outside_quotes(text or "", ";")
        params: dict[str, str] = {}
        for item in rest:
            name, sep, value = item.partition("=")
            if sep:
                params[name.strip().lower()] = value.strip().strip('"')
        return cls(head.strip().lower(), params)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return out


def accept_list(header: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, in the order given (q-values are not weighed)."""
    return [MediaType.parse(part) for part in _split_outside_quotes(header or "", ",") if part.strip()]


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> MediaType:
        return MediaType.parse(self.headers.get("content-type", ""))


class MultipartReader:
    """Feed body chunks, get complete parts back; `finish()` checks the closing delimiter.

    Searches resume where the last one stopped, so a body costs O(size) however it is chunked.
    """

    def __init__(self, boundary: str, max_part_bytes: int | None = None) -> None:
        # RFC 2046 says at most 70 characters; Orthanc's DICOMweb plugin sends longer ones.
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise MultipartError(f"the boundary parameter must have 1 to {MAX_BOUNDARY} characters")
        self._dash = b"--" + boundary.encode("latin-1")
        self._delimiter = CRLF + self._dash
        self._buf = bytearray()
        self._scan_from = 0
        self._state = "preamble"  # preamble → delimiter → headers → body → delimiter → … → done
        self._delimiter_len = 0
        self._headers: dict[str, str] = {}
        self._max_part = max_part_bytes

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, chunk: bytes) -> list[Part]:
        """Add bytes; return the parts they completed."""
        if self._state == "done":
            return []  # the epilogue is ignored (RFC 2046)
        self._buf += chunk
        parts: list[Part] = []
        while self._step(parts):
            pass
        return parts

    def finish(self) -> None:
        """Raise MultipartError unless the closing delimiter was seen."""
        if self._state != "done":
            raise MultipartError("the body ends before the closing boundary delimiter")

    def _step(self, parts: list[Part]) -> bool:
        buf = self._buf
        if self._state == "preamble":
            # The first delimiter may open the body (no CRLF before it) or follow a preamble.
            at = 0 if buf.startswith(self._dash) else buf.find(self._delimiter)
            if at < 0:
                return False
            start = at + (0 if at == 0 and buf.startswith(self._dash) else len(CRLF))
            del buf[:start]
            self._state, self._delimiter_len = "delimiter", len(self._dash)
            return True
        if self._state == "headers":
            end = buf.find(CRLF + CRLF)
            if end < 0:
                if len(buf) > 64 * 1024:
                    raise MultipartError("part headers longer than 64 KiB")
                return False
            self._headers = _parse_headers(bytes(buf[:end]))
            del buf[:end + 4]
            self._state, self._scan_from = "body", 0
            return True
        if self._state == "body":
            at = buf.find(self._delimiter, self._scan_from)
            if at < 0:
                if self._max_part is not None and len(buf) > self._max_part:
                    raise MultipartError(f"a part is larger than {self._max_part} bytes")
                self._scan_from = max(0, len(buf) - len(self._delimiter) + 1)
                return False
            parts.append(Part(self._headers, bytes(buf[:at])))
            # Drop the part now: what follows the delimiter may not have arrived yet, and the
            # next feed must not find (and emit) this part again.
            del buf[:at]
            self._state, self._delimiter_len = "delimiter", len(self._delimiter)
            return True
        if self._state == "delimiter":  # buf starts with a delimiter of _delimiter_len bytes
            return self._after_delimiter(self._delimiter_len)
        return False

    def _after_delimiter(self, pos: int) -> bool:
        # After a delimiter: "--" closes the body; otherwise optional blanks, then CRLF, then headers.
        buf = self._buf
        if len(buf) < pos + 2:
            return False
        if buf[pos:pos + 2] == b"--":
            self._state = "done"
            del buf[:]
            return False
        eol = buf.find(CRLF, pos)
        if eol < 0:
            return False
        if buf[pos:eol].strip(b" \t"):
            raise MultipartError("unexpected bytes after a boundary delimiter")
        del buf[:eol + 2]
        self._state, self._headers = "headers", {}
        return True


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError("a part header line without a colon")
        headers[name.strip().lower()] = value.strip()
    return headers


def new_boundary() -> str:
    """A boundary that cannot occur in the parts (a random UUID)."""
    return uuid.uuid4().hex


def related_type(part_type: str, boundary: str) -> str:
    """The Content-Type of a multipart/related body whose root part is of `part_type`."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def write_parts(parts: Iterable[tuple[str, bytes]], boundary: str,
                extra_headers: dict[str, str] | None = None) -> Iterator[bytes]:
    """The body chunks of a multipart/related message, one per part: (content type, bytes) per part.

    One chunk per part, not three: a streamed response hands each chunk to the event loop from a
    worker thread, and a copy of the part costs less than two more hand-offs.
    """
    dash = b"--" + boundary.encode("ascii")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (extra_headers or {}).items())
    for content_type, body in parts:
        head = f"Content-Type: {content_type}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        yield b"".join((dash, CRLF, head, body, CRLF))
    yield dash + b"--" + CRLF
