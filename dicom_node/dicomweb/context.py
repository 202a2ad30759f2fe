"""What the DICOMweb routes share: the node's config, index, storage and on-demand provider; errors."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.group_commit import GroupCommitter
from dicom_node.handlers import NodeContext
from dicom_node.index.live_config import LiveConfig
from dicom_node.qr.attributes import Level, Model
from dicom_node.qr.matching import QueryError
from dicom_node.qr.on_demand import NO_ON_DEMAND, OnDemandProvider
from dicom_node.qr.query import Query, parse_query

log = logging.getLogger("srnode.dicomweb")


class Actor(Protocol):
    """Who a token belongs to, as the audit log names them (dicom_node.admin.auth.Principal)."""

    @property
    def actor(self) -> str: ...


# (request, bearer credentials) -> Actor, raising HTTPException 401/403: the admin app's token checks,
# handed in when it mounts this service (so that this package does not import the admin app).
TokenCheck = Callable[[Request, HTTPAuthorizationCredentials | None], Actor]


@dataclass(frozen=True)
class TokenChecks:
    read: TokenCheck  # QIDO-RS, WADO-RS
    store: TokenCheck  # STOW-RS


_bearer = HTTPBearer(auto_error=False, description="A token from admin.tokens in the node config")


def _may_read(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Actor:
    return request.app.state.token_checks.read(request, creds)


def _may_store(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Actor:
    return request.app.state.token_checks.store(request, creds)


Reader = Annotated[Actor, Depends(_may_read)]
Storer = Annotated[Actor, Depends(_may_store)]


class Refused(Exception):
    """A request answered with an HTTP error status; the app logs it once (`logged`, by default
    the message) and returns `message`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 logged: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.logged = logged or message


def bad_query(exc: QueryError) -> Refused:
    """400 for an identifier C-FIND's parser refused. The client is told the offending value;
    the log gets only the attribute, since the value may be patient data (a PatientBirthDate)."""
    text = str(exc)
    return Refused(400, text, logged=f"invalid query ({text.split(':', 1)[0]})")


@dataclass
class DicomwebContext:
    live: LiveConfig
    sessions: sessionmaker[Session]
    # The node's OnDemandSlot (NodeContext.on_demand, handed in by the admin service): asks what
    # its pipeline installed, per request.
    provider: OnDemandProvider = NO_ON_DEMAND
    # The node's group committer (NodeContext.committer): STOW-RS commits with its C-STOREs.
    committer: GroupCommitter | None = None

    def __post_init__(self) -> None:
        # STOW-RS stores through the C-STORE handler's policy, which reads a NodeContext.
        self.receive = NodeContext(cfg=self.live.view(), session_factory=self.sessions,
                                   storage_dir=Path(self.live.base.node.storage_dir), committer=self.committer)

    @property
    def cfg(self) -> SRNodeConfig:
        return self.live.current()

    @property
    def storage_dir(self) -> Path:
        return self.receive.storage_dir

    @property
    def on_demand(self) -> OnDemandProvider:
        return self.provider


def ctx_of(request: Request) -> DicomwebContext:
    """The DicomwebContext of the app serving `request`."""
    return request.app.state.dicomweb


def service_root(request: Request) -> str:
    """The DICOMweb service's base URL as the client reached it (for RetrieveURL and BulkDataURI)."""
    return str(request.base_url).rstrip("/") + request.scope.get("root_path", "").rstrip("/")


def keyword_of(key: str) -> str:
    """A QIDO-RS attribute key (keyword or 8 hex digits) as a keyword; QueryError if unknown."""
    if "." in key:
        raise QueryError(f"{key}: sequence attribute paths are not supported")
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        keyword = keyword_for_tag(int(key, 16))
    else:
        keyword = key if tag_for_keyword(key) is not None else ""
    if not keyword:
        raise QueryError(f"{key}: not a DICOM attribute keyword or tag")
    return keyword


def build_query(level: Level, values: dict[str, str | None]) -> Query:
    """The C-FIND query (dicom_node.qr, Study Root) for `values`: keyword → matching value, None or
    "" meaning "return it". One identifier path for QIDO-RS and WADO-RS, the same as C-FIND's."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.name
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise QueryError(f"{keyword}: not a DICOM attribute keyword")
        vr = dictionary_VR(tag)
        if vr == "SQ":
            raise QueryError(f"{keyword}: sequence attributes cannot be matched")
        try:
            # Query values are not stored values (ranges, wildcards): no value validation.
            identifier[tag] = DataElement(tag, vr, value or None, validation_mode=pydicom_config.IGNORE)
        except (ValueError, TypeError, OverflowError):
            raise QueryError(f"{keyword}: {value!r} is not a valid value for VR {vr}") from None
    return parse_query(identifier, Model.STUDY_ROOT)


def one_log_line(request: Request, status: int, message: str, who: Any = None) -> None:
    """The one line a refused DICOMweb request is logged with (no patient data: UIDs at most)."""
    actor = f" by {who.actor}" if who is not None else ""
    log.warning("DICOMweb %s %s%s refused (%d): %s", request.method, request.url.path, actor, status, message)
