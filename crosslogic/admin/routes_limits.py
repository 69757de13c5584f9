"""Live rate-limit state: `GET /admin/v1/keys/{key_id}/limits` and `GET /admin/v1/tenants/{tenant_id}/limits`."""

# No `from __future__ import annotations`: FastAPI must resolve the route-local Annotated aliases.
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends

from crosslogic.admin.deps import AdminCall, AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.ratelimit import RateLimiter, SubjectState
from crosslogic.ratelimit.subjects import key_subject, tenant_subject
from crosslogic.tenants import api_key_repository as keys
from crosslogic.tenants import tenant_repository as tenants


def limits_router(deps: AdminDeps, limiter: RateLimiter) -> APIRouter:
    router = APIRouter(tags=["limits"])
    Reader = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.READ))]

    @router.get(
        "/keys/{key_id}/limits",
        summary="A key's limits, what is left in the current window, and its active leases",
    )
    async def key_limits(_: Reader, key_id: UUID) -> SubjectState:
        key = await keys.get_api_key(deps.pool, key_id)
        return await limiter.state(key_subject(key.tenant_id, key.id, key))

    @router.get(
        "/tenants/{tenant_id}/limits",
        summary="A tenant's limits (shared by all its keys), what is left, and its active leases",
    )
    async def tenant_limits(_: Reader, tenant_id: UUID) -> SubjectState:
        tenant = await tenants.get_tenant(deps.pool, tenant_id)
        return await limiter.state(tenant_subject(tenant.id, tenant))

    return router
