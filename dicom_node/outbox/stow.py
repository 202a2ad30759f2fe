"""STOW-RS client for DICOMweb destinations (`peers.<key>.kind: dicomweb`).

Transport only: `OutboxSender` keeps the one code path for rows, retries, backoff and health, and
asks this module to carry a batch (`StowClient.store`) or to look instances up (`present`, the
QIDO-RS counterpart of outbox.confirm's C-FIND). Each request posts stored files as they are
(multipart/related; type="application/dicom"); the peer's FailedSOPSequence says which it refused.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from config.schema import DicomwebPeerConfig
from dicom_node.multipart import new_boundary, related_type, write_parts

DICOM = "application/dicom"
# Statuses of a STOW-RS response whose body says per instance what happened (PS3.18 10.5.3).
ANSWERED = frozenset({200, 202, 409})


class StowUnavailable(OSError):
    """The peer could not be reached or did not answer usefully: nothing is known about the batch."""


@dataclass(frozen=True)
class StowResult:
    """What the peer said about each SOP Instance UID of a batch: missing from `refused` = stored."""

    refused: dict[str, str]  # SOP Instance UID → reason
    http_status: int


def _auth_header(peer: DicomwebPeerConfig) -> dict[str, str]:
    auth = peer.auth
    if auth is None:
        return {}
    if auth.type == "bearer":
        return {"Authorization": f"Bearer {os.environ.get(auth.token_env or '', '')}"}
    secret = f"{auth.username}:{os.environ.get(auth.password_env or '', '')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(secret).decode("ascii")}


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return (item.get(tag) or {}).get("Value") or []


class StowClient:
    """One HTTP(S) connection to a DICOMweb peer, kept open across requests of a drain pass."""

    def __init__(self, peer: DicomwebPeerConfig) -> None:
        self.peer = peer
        parsed = urllib.parse.urlsplit(peer.url)
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname or ""
        self._port = parsed.port or (443 if self._https else 80)
        self._path = parsed.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.peer.timeout_s,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.peer.timeout_s)
        return self._conn

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            conn = self._connection()
            conn.request(method, self._path + path, body=body, headers={**_auth_header(self.peer), **headers})
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise StowUnavailable(f"{self.peer.url}: {type(exc).__name__}: {exc}") from None

    def store(self, parts: Sequence[tuple[str, bytes]]) -> StowResult:
        """POST (SOP Instance UID, Part 10 bytes) pairs in one STOW-RS request."""
        boundary = new_boundary()
        body = b"".join(write_parts(((DICOM, data) for _, data in parts), boundary))
        status, raw = self._request("POST", "/studies", body, {
            "Content-Type": related_type(DICOM, boundary), "Accept": "application/dicom+json"})
        if status not in ANSWERED:
            raise StowUnavailable(f"{self.peer.url}: STOW-RS answered HTTP {status}")
        refused: dict[str, str] = {}
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            answer = {}
        for item in _values(answer, "00081198"):  # FailedSOPSequence
            uids = _values(item, "00081155")
            reason = _values(item, "00081197")
            if uids:
                refused[str(uids[0])] = f"FailureReason 0x{int(reason[0]):04X}" if reason else "refused"
        stored = {str(u) for item in _values(answer, "00081199") for u in _values(item, "00081155")}
        if status != 200:
            # A peer that refused without naming instances refused all those it did not list as stored.
            for sop, _ in parts:
                if sop not in stored and sop not in refused:
                    refused[sop] = f"not stored (HTTP {status})"
        return StowResult(refused, status)

    def present(self, keys: Iterable[tuple[str, str, str]]) -> set[str] | None:
        """SOP Instance UIDs of (study, series, instance) keys that the peer has (QIDO-RS); None if
        the peer gave no usable answer."""
        found: set[str] = set()
        by_series: dict[tuple[str, str], set[str]] = {}
        for study, series, sop in keys:
            by_series.setdefault((study, series), set()).add(sop)
        try:
            for (study, series), sops in by_series.items():
                status, raw = self._request("GET", f"/studies/{study}/series/{series}/instances"
                                            "?includefield=00080018", None, {"Accept": "application/dicom+json"})
                if status == 204 or (status == 404 and not raw.strip()):
                    continue
                if status != 200:
                    return None
                for item in json.loads(raw) if raw.strip() else []:
                    found.update(str(u) for u in _values(item, "00080018") if str(u) in sops)
        except (StowUnavailable, ValueError):
            return None
        return found

    def echo(self) -> tuple[bool, str]:
        """A reachability test for the console: QIDO-RS of one study."""
        try:
            status, _ = self._request("GET", "/studies?limit=1", None, {"Accept": "application/dicom+json"})
        except StowUnavailable as exc:
            return False, str(exc)
        finally:
            self.close()
        return (status in (200, 204)), ("" if status in (200, 204) else f"QIDO-RS answered HTTP {status}")
