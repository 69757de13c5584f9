"""`/admin/v1/audit`: query the audit log, newest first."""

# No `from __future__ import annotations`: FastAPI must resolve the route-local Annotated aliases.
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from crosslogic.admin.deps import AdminCall, AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.audit.log import AuditEntry, AuditFilter, list_audit
from crosslogic.storage.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page


def audit_router(deps: AdminDeps) -> APIRouter:
    router = APIRouter(prefix="/audit", tags=["audit"])
    Reader = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.READ))]

    @router.get("", summary="Query the admin audit log (newest first)")
    async def query_audit(
        _: Reader,
        actor: str | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        result: str | None = None,
        since: Annotated[datetime | None, Query(description="Entries at or after (ISO 8601)")] = None,
        until: Annotated[datetime | None, Query(description="Entries before (ISO 8601)")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        after: Annotated[
            int | None, Query(ge=1, description="`last_id` of the previous page")
        ] = None,
    ) -> Page[AuditEntry]:
        query = AuditFilter(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            result=result,
            since=since,
            until=until,
            limit=limit,
            after=after,
        )
        return await list_audit(deps.pool, query)

    return router
