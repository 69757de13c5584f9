"""What the admin routers need (pool, JWT verifier) and the per-request auth dependency.

A refused admin credential is throttled per client address (`crosslogic.auth.throttle`: 429 with
retry-after once the address's failure budget is spent) and audited in aggregate
(`crosslogic.admin.denied_audit`). The token is verified before the throttle is consulted: that
costs no I/O (a signature check; JWKS refreshes are rate-limited on their own), and it means a
valid token is never refused because other clients behind the same address sent garbage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from crosslogic.admin.denied_audit import DeniedAttempts
from crosslogic.admin.jwt_auth import (
    AdminJWTVerifier,
    AdminPrincipal,
    AdminScope,
    TokenRejected,
    bearer_token,
)
from crosslogic.api.request_ids import request_ids
from crosslogic.audit.log import AuditContext
from crosslogic.auth.throttle import FailedAuthThrottle
from crosslogic.errors import PermissionDeniedError, RateLimitError

# auto_error=False: we answer missing/malformed credentials ourselves, in OpenAI's error shape.
_bearer = HTTPBearer(auto_error=False, description="Admin JWT (scopes admin:read / admin:write)")


@dataclass(frozen=True)
class AdminDeps:
    pool: asyncpg.Pool
    verifier: AdminJWTVerifier
    # Record refused credentials in the audit table too (they are always logged).
    audit_denied: bool = True
    throttle: FailedAuthThrottle = field(default_factory=FailedAuthThrottle)
    # None: built from the above in __post_init__.
    denied: DeniedAttempts | None = None

    def __post_init__(self) -> None:
        if self.denied is None:
            object.__setattr__(self, "denied", DeniedAttempts(self.pool, write_rows=self.audit_denied))


class AdminCall(BaseModel):
    """An authenticated, authorised admin request."""

    principal: AdminPrincipal
    audit: AuditContext


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


def request_context(request: Request, actor: str, throttle: FailedAuthThrottle) -> AuditContext:
    return AuditContext(
        actor=actor,
        # The server's id (never the client's header: a caller could pin audit rows to any id).
        request_id=request_ids(request)[0],
        # Not `request.client`: uvicorn rewrites it from a client-written X-Forwarded-For when the
        # peer is the local HAProxy (crosslogic/auth/client_address.py), so an audit row would
        # record whatever address the caller chose.
        client_addr=throttle.client_of(request.scope),
    )


def require_scope(deps: AdminDeps, scope: AdminScope) -> Callable[..., Awaitable[AdminCall]]:
    """A FastAPI dependency that verifies the bearer JWT and checks `scope`."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> AdminCall:
        route = request.scope.get("route")
        action = f"{request.method} {getattr(route, 'path', request.url.path)}"
        principal: AdminPrincipal | None = None
        try:
            token = credentials.credentials if credentials else bearer_token(
                request.headers.get("authorization")
            )
            principal = await deps.verifier.verify(token)
            deps.verifier.authorize(principal, scope)
        except (TokenRejected, PermissionDeniedError) as exc:
            reason = exc.reason if isinstance(exc, TokenRejected) else "insufficient_scope"
            ctx = request_context(request, principal.subject if principal else "anonymous", deps.throttle)
            source = deps.throttle.client_of(request.scope)
            refusal: TokenRejected | PermissionDeniedError | RateLimitError = exc
            if principal is None:  # a valid token lacking a scope guesses nothing: not throttled
                try:
                    deps.throttle.fail(source)
                except RateLimitError as throttled:
                    reason, refusal = "throttled", throttled
            assert deps.denied is not None
            await deps.denied.record(
                ctx, source=source, action=action, target_id=request.url.path, reason=reason
            )
            raise refusal from None
        return AdminCall(principal=principal, audit=request_context(request, principal.subject, deps.throttle))

    return dependency
