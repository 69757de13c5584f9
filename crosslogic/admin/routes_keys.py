"""API keys: `/admin/v1/tenants/{tenant_id}/keys` (create, list) and `/admin/v1/keys/{key_id}`."""

# No `from __future__ import annotations`: FastAPI must resolve the route-local Annotated aliases.
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, status

from crosslogic.admin.deps import AdminCall, AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.audit.log import audited
from crosslogic.storage.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from crosslogic.tenants import api_key_repository as keys
from crosslogic.tenants.models import ApiKeyCreate, ApiKeyLimitsUpdate, ApiKeyRecord, CreatedApiKey


def keys_router(deps: AdminDeps) -> APIRouter:
    router = APIRouter(tags=["keys"])
    Reader = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.READ))]
    Writer = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.WRITE))]

    @router.post(
        "/tenants/{tenant_id}/keys",
        status_code=status.HTTP_201_CREATED,
        summary="Create an API key; the response holds the secret, which is never shown again",
    )
    async def create_key(call: Writer, tenant_id: UUID, body: ApiKeyCreate) -> CreatedApiKey:
        async with audited(deps.pool, call.audit, action="key.create", target_type="api_key") as change:
            change.after = {"tenant_id": str(tenant_id), "request": body.model_dump(mode="json")}
            created = await keys.create_api_key(change.conn, tenant_id, body)
            # The audit row gets the record only: the secret must not outlive this response.
            change.target_id, change.after = str(created.key.id), created.key
        return created

    @router.get("/tenants/{tenant_id}/keys", summary="List a tenant's API keys (never their secrets)")
    async def list_keys(
        _: Reader,
        tenant_id: UUID,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        after: Annotated[UUID | None, Query(description="`last_id` of the previous page")] = None,
        include_revoked: bool = True,
    ) -> Page[ApiKeyRecord]:
        return await keys.list_api_keys(
            deps.pool, tenant_id, limit=limit, after=after, include_revoked=include_revoked
        )

    @router.get("/keys/{key_id}", summary="Get one API key (without its secret)")
    async def get_key(_: Reader, key_id: UUID) -> ApiKeyRecord:
        return await keys.get_api_key(deps.pool, key_id)

    @router.patch(
        "/keys/{key_id}",
        summary="Set or clear a key's own limits (rpm, tpm, max_concurrency) or preferred_region; null clears one",
    )
    async def update_key_limits(call: Writer, key_id: UUID, body: ApiKeyLimitsUpdate) -> ApiKeyRecord:
        async with audited(
            deps.pool, call.audit, action="key.update", target_type="api_key", target_id=str(key_id)
        ) as change:
            change.before = await keys.get_api_key(change.conn, key_id)
            change.after = after = await keys.update_api_key_limits(change.conn, key_id, body)
        return after

    @router.post(
        "/keys/{key_id}/revoke",
        summary="Revoke an API key (idempotent); refused on every replica within a second",
    )
    async def revoke_key(call: Writer, key_id: UUID) -> ApiKeyRecord:
        async with audited(
            deps.pool, call.audit, action="key.revoke", target_type="api_key", target_id=str(key_id)
        ) as change:
            change.before = await keys.get_api_key(change.conn, key_id)
            change.after = after = await keys.revoke_api_key(change.conn, key_id)
        return after

    return router
