"""`GET /usage` (mounted under `/admin/v1`): usage per tenant / key / model / hour / day with cost."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from crosslogic.metering.reports import GroupBy, UsageQuery, UsageRow, usage_report


class UsageReport(BaseModel):
    object: Literal["usage_report"] = "usage_report"
    group_by: GroupBy
    data: list[UsageRow]


def build_usage_router(pool: asyncpg.Pool, auth: Callable[..., Any]) -> APIRouter:
    """`auth` is the admin read dependency, e.g. `require_scope(deps, AdminScope.READ)`."""
    router = APIRouter(prefix="/usage", tags=["usage"])

    # Dependencies by value, not in annotations: with postponed annotations FastAPI could not
    # resolve the closure variable `auth`.
    @router.get(
        "", summary="Usage and cost from the usage ledger, grouped one way",
        dependencies=[Depends(auth)],
    )
    async def get_usage(
        tenant_id: uuid.UUID | None = None,
        key_id: uuid.UUID | None = None,
        model: str | None = None,
        start: Annotated[datetime | None, Query(description="Inclusive, ISO 8601 with zone")] = None,
        end: Annotated[datetime | None, Query(description="Exclusive, ISO 8601 with zone")] = None,
        group_by: GroupBy = GroupBy.TENANT,
    ) -> UsageReport:
        query = UsageQuery(
            tenant_id=tenant_id, key_id=key_id, model=model, start=start, end=end, group_by=group_by
        )
        return UsageReport(group_by=group_by, data=await usage_report(pool, query))

    return router
