"""`/admin/v1/tenants`: create, list, inspect, change limits, suspend and reactivate tenants."""

# No `from __future__ import annotations`: FastAPI must resolve the route-local Annotated aliases.
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, status

from crosslogic.admin.deps import AdminCall, AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.api.errors import error_responses
from crosslogic.audit.log import audited
from crosslogic.errors import InvalidRequestError
from crosslogic.storage.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from crosslogic.tenants import tenant_repository as tenants
from crosslogic.tenants.models import Tenant, TenantCreate, TenantStatus, TenantUpdate


def tenants_router(deps: AdminDeps) -> APIRouter:
    router = APIRouter(prefix="/tenants", tags=["tenants"])
    Reader = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.READ))]
    Writer = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.WRITE))]

    @router.post(
        "", status_code=status.HTTP_201_CREATED, summary="Create a tenant", responses=error_responses(409)
    )
    async def create_tenant(call: Writer, body: TenantCreate) -> Tenant:
        async with audited(deps.pool, call.audit, action="tenant.create", target_type="tenant") as change:
            change.after = body
            tenant = await tenants.create_tenant(change.conn, body)
            change.target_id, change.after = str(tenant.id), tenant
        return tenant

    @router.get("", summary="List tenants (oldest first, keyset-paginated)")
    async def list_tenants(
        _: Reader,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        after: Annotated[UUID | None, Query(description="`last_id` of the previous page")] = None,
        status: TenantStatus | None = None,
    ) -> Page[Tenant]:
        return await tenants.list_tenants(deps.pool, limit=limit, after=after, status=status)

    @router.get("/{tenant_id}", summary="Get one tenant")
    async def get_tenant(_: Reader, tenant_id: UUID) -> Tenant:
        return await tenants.get_tenant(deps.pool, tenant_id)

    @router.patch(
        "/{tenant_id}",
        summary="Change a tenant's default limits, Stripe customer id or preferred region (null clears one)",
        # 409: the Stripe customer already bills another tenant (one customer, one tenant).
        responses=error_responses(409),
    )
    async def update_tenant(call: Writer, tenant_id: UUID, body: TenantUpdate) -> Tenant:
        if "status" in body.model_fields_set:
            # Suspension has its own audited actions; keep PATCH to limits and billing identity.
            raise InvalidRequestError(
                "status cannot be patched; use POST /admin/v1/tenants/{id}/suspend or /reactivate",
                param="status",
            )
        async with audited(
            deps.pool, call.audit, action="tenant.update", target_type="tenant", target_id=str(tenant_id)
        ) as change:
            change.before = await tenants.get_tenant(change.conn, tenant_id, for_update=True)
            change.after = after = await tenants.update_tenant(change.conn, tenant_id, body)
        return after

    async def set_status(call: AdminCall, tenant_id: UUID, new_status: TenantStatus, action: str) -> Tenant:
        async with audited(
            deps.pool, call.audit, action=action, target_type="tenant", target_id=str(tenant_id)
        ) as change:
            change.before = await tenants.get_tenant(change.conn, tenant_id, for_update=True)
            change.after = after = await tenants.set_tenant_status(change.conn, tenant_id, new_status)
        return after

    @router.post(
        "/{tenant_id}/suspend",
        summary="Suspend a tenant: every key is refused (403) on every replica within a second",
    )
    async def suspend_tenant(call: Writer, tenant_id: UUID) -> Tenant:
        return await set_status(call, tenant_id, "suspended", "tenant.suspend")

    @router.post("/{tenant_id}/reactivate", summary="Reactivate a suspended tenant")
    async def reactivate_tenant(call: Writer, tenant_id: UUID) -> Tenant:
        return await set_status(call, tenant_id, "active", "tenant.reactivate")

    return router
