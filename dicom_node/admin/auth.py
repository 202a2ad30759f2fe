"""Bearer-token authentication against `admin.tokens` (token → role).

Roles: `admin` may read and change; `read` may only read; `reader` is reserved for a later reader
study and may read nothing here yet. Tokens never appear in logs or the audit trail: the actor is
the role plus a short fingerprint of the token.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

READ_ROLES = frozenset({"admin", "read"})
WRITE_ROLES = frozenset({"admin"})

log = logging.getLogger("srnode.admin")

_bearer = HTTPBearer(auto_error=False, description="A token from admin.tokens in the node config")


@dataclass(frozen=True)
class Principal:
    role: str
    fingerprint: str

    @property
    def actor(self) -> str:
        """Who did it, as written to the audit log."""
        return f"{self.role}:{self.fingerprint}"


def token_fingerprint(token: str) -> str:
    """First 8 hex digits of the token's sha256: identifies a token without revealing it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def _principal(request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    tokens: dict[str, str] = request.app.state.live.base.admin.tokens
    given = creds.credentials.encode("utf-8")
    for token, role in tokens.items():
        # Constant-time comparison so response timing does not leak token prefixes.
        if hmac.compare_digest(token.encode("utf-8"), given):
            return Principal(role=role, fingerprint=token_fingerprint(token))
    log.warning("admin API: unknown bearer token from %s (%s %s)", _client(request), request.method, request.url.path)
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
    )


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
