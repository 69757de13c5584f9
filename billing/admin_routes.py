"""`/billing/*` admin routes (mounted under `/admin/v1`): dead letters, replay, reconciliation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from billing.dead_letters import DeadLetter, list_dead_letters, replay_dead_letter
from billing.reconcile import ReconcileRow, reconcile
from crosslogic.admin.deps import AdminCall, AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.audit.log import write_audit


class DeadLetterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeadLetter]


class Reconciliation(BaseModel):
    object: Literal["billing_reconciliation"] = "billing_reconciliation"
    data: list[ReconcileRow]


def billing_admin_router(deps: AdminDeps) -> APIRouter:
    """The routes behind the admin plane's scopes: `build_admin_router(..., extra=[billing_admin_router(deps)])`."""
    return build_billing_admin_router(
        deps.pool, require_scope(deps, AdminScope.READ), require_scope(deps, AdminScope.WRITE)
    )


def build_billing_admin_router(
    pool: asyncpg.Pool, reader: Callable[..., Any], writer: Callable[..., Any]
) -> APIRouter:
    """`reader`/`writer`: `require_scope(deps, AdminScope.READ / WRITE)` from crosslogic.admin.deps."""
    router = APIRouter(prefix="/billing", tags=["billing"])

    # Dependencies by value, not in annotations: with postponed annotations FastAPI could not
    # resolve the closure variables `reader` / `writer`.
    @router.get(
        "/dead-letters", summary="Billing work that failed permanently",
        dependencies=[Depends(reader)],
    )
    async def get_dead_letters(
        include_replayed: bool = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> DeadLetterList:
        return DeadLetterList(
            data=await list_dead_letters(pool, include_replayed=include_replayed, limit=limit)
        )

    @router.post("/dead-letters/{letter_id}/replay", summary="Queue a dead letter again")
    async def replay(
        letter_id: Annotated[int, Path(ge=1)],
        call: AdminCall = Depends(writer),
    ) -> DeadLetter:
        async with pool.acquire() as conn, conn.transaction():
            letter = await replay_dead_letter(conn, letter_id, call.principal.subject)
            await write_audit(
                conn, call.audit, action="billing.dead_letter.replay", target_type="dead_letter",
                target_id=str(letter_id), before=None, after=letter.model_dump(mode="json"),
            )
        return letter

    @router.get(
        "/reconciliation", summary="Ledger vs delivered meter events per customer/hour",
        dependencies=[Depends(reader)],
    )
    async def get_reconciliation(
        start: datetime | None = None,
        end: datetime | None = None,
        all_rows: bool = False,
    ) -> Reconciliation:
        rows = await reconcile(pool, start=start, end=end, only_differences=not all_rows)
        return Reconciliation(data=rows)

    return router
