"""Bearer-token authentication against `admin.tokens` (token → role, or token → {role, name}).

Roles: `admin` may read and change; `read` may only read; `reader` reads cases of reader studies
only; `store` may only store instances by STOW-RS (DICOMweb; `admin` may too). Tokens never
appear in logs or the audit trail: the actor is the token's `name` with its role, or, for a token
without a name, the role plus a short fingerprint of the token.
"""
from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from config.schema import SRNodeConfig
from dicom_node.index.audit import token_fingerprint

READ_ROLES = frozenset({"admin", "read"})
WRITE_ROLES = frozenset({"admin"})
STORE_ROLES = frozenset({"admin", "store"})

log = logging.getLogger("srnode.admin")

_bearer = HTTPBearer(auto_error=False, description="A token from admin.tokens in the node config")


# What a browser sends when its stored token is unset (`Bearer ${null}`): a page asking "who am
# I?" before sign-in, not a wrong token, so it is answered like a missing token, without a WARNING.
UNSET_TOKENS = frozenset({"null", "undefined"})


@dataclass(frozen=True)
class Principal:
    role: str
    fingerprint: str
    name: str = ""

    @property
    def actor(self) -> str:
        """Who did it, as written to the audit log: "Dr. Kim (admin)", or "admin:1a2b3c4d" unnamed."""
        return f"{self.name} ({self.role})" if self.name else f"{self.role}:{self.fingerprint}"


def _principal(request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
    if (creds is None or creds.scheme.lower() != "bearer" or not creds.credentials
            or creds.credentials in UNSET_TOKENS):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    entries = request.app.state.live.base.admin.token_entries()
    given = creds.credentials.encode("utf-8")
    for token, entry in entries.items():
        # Constant-time comparison so response timing does not leak token prefixes.
        if hmac.compare_digest(token.encode("utf-8"), given):
            return Principal(role=entry.role, fingerprint=token_fingerprint(token), name=entry.name)
    log.warning("admin API: unknown bearer token from %s (%s %s)", _client(request), request.method, request.url.path)
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
    )


def token_names(cfg: SRNodeConfig) -> dict[str, str]:
    """Token fingerprint → display name, for the tokens that have one (reader studies name
    readers by fingerprint; the console shows the name)."""
    return {token_fingerprint(t): e.name for t, e in cfg.admin.token_entries().items() if e.name}


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _require_role(request: Request, creds: HTTPAuthorizationCredentials | None,
                  roles: frozenset[str], refusal: str) -> Principal:
    # One check for every role-guarded dependency: known token, allowed role, one log line if not.
    who = _principal(request, creds)
    if who.role not in roles:
        log.warning("admin API: %s may not %s %s", who.actor, request.method, request.url.path)
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {who.role!r} {refusal}")
    return who


def require_read(
    request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    """Dependency: a token whose role may read."""
    return _require_role(request, creds, READ_ROLES, "may not read the admin API")


def require_admin(
    request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    """Dependency: a token with the admin role (needed for every change)."""
    return _require_role(request, creds, WRITE_ROLES, "may not change anything")


def require_store(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """Dependency: a token that may store instances (STOW-RS): the store or admin role."""
    return _require_role(request, creds, STORE_ROLES, "may not store instances")
