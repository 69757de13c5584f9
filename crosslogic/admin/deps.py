"""What the admin routers need (pool, JWT verifier) and the per-request auth dependency."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from crosslogic.admin.audit import AuditContext, record_denied
from crosslogic.admin.jwt_auth import (
    AdminJWTVerifier,
    AdminPrincipal,
    AdminScope,
    TokenRejected,
    bearer_token,
    log_auth_failure,
)
from crosslogic.errors import PermissionDeniedError

# auto_error=False: we answer missing/malformed credentials ourselves, in OpenAI's error shape.
_bearer = HTTPBearer(auto_error=False, description="Admin JWT (scopes admin:read / admin:write)")


@dataclass(frozen=True)
class AdminDeps:
    pool: asyncpg.Pool
    verifier: AdminJWTVerifier
    # Record refused credentials in the audit table too (they are always logged).
    audit_denied: bool = True


class AdminCall(BaseModel):
    """An authenticated, authorised admin request."""

    principal: AdminPrincipal
    audit: AuditContext


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


def request_context(request: Request, actor: str) -> AuditContext:
    request_id = getattr(request.state, "request_id", None) or request.headers.get("x-request-id")
    return AuditContext(
        actor=actor,
        request_id=request_id or f"req_{uuid.uuid4().hex}",
        client_addr=request.client.host if request.client else None,
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
            ctx = request_context(request, principal.subject if principal else "anonymous")
            log_auth_failure(
                reason,
                actor=ctx.actor,
                action=action,
                request_id=ctx.request_id,
                client_addr=ctx.client_addr,
            )
            if deps.audit_denied:
                await record_denied(
                    deps.pool, ctx, action=action, target_id=request.url.path, reason=reason
                )
            raise
        return AdminCall(principal=principal, audit=request_context(request, principal.subject))

    return dependency
