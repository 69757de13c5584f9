"""The admin audit log: one append-only row per admin action, written in the change's transaction.

Each row is also emitted as one JSON log line (logger `crosslogic.audit`) once it is durable, so log
pipelines see exactly what the table holds. A change that fails with a client error rolls back, and the
attempt is then recorded on its own with result 'error'; refused credentials are recorded as 'denied',
aggregated per source and reason (`crosslogic.admin.denied_audit`): such a row may stand for
`attempts` refusals seen between `first_at` and `last_at`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from crosslogic.errors import CrossLogicError, InvalidRequestError
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Connection, Executor
from crosslogic.storage.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, to_page

log = logging.getLogger("crosslogic.audit")

AuditResult = Literal["success", "error", "denied"]


class AuditContext(BaseModel):
    """Who did it and from where; built once per admin request."""

    actor: str
    request_id: str | None = None
    client_addr: str | None = None


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    before: Any = None
    after: Any = None
    request_id: str | None
    client_addr: str | None
    result: str
    attempts: int = 1
    first_at: datetime | None = None
    last_at: datetime | None = None


class AuditFilter(BaseModel):
    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    result: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    # Id of the last entry of the previous page (entries are listed newest first).
    after: int | None = None


_COLUMNS = (
    "id, at, actor, action, target_type, target_id, before::text AS before, after::text AS after, "
    "request_id, client_addr, result, attempts, first_at, last_at"
)


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(_jsonable(value), default=str, sort_keys=True)


def _entry(row: asyncpg.Record) -> AuditEntry:
    data = dict(row)
    # Read as text so the result does not depend on a jsonb codec being installed on the pool.
    for column in ("before", "after"):
        data[column] = None if data[column] is None else json.loads(data[column])
    return AuditEntry.model_validate(data)


async def write_audit(
    db: Executor,
    ctx: AuditContext,
    *,
    action: str,
    target_type: str,
    target_id: str | None,
    before: Any = None,
    after: Any = None,
    result: AuditResult = "success",
    attempts: int = 1,
    first_at: datetime | None = None,
    last_at: datetime | None = None,
) -> AuditEntry:
    row = await db.fetchrow(
        "INSERT INTO audit_log (actor, action, target_type, target_id, before, after, request_id, "
        "client_addr, result, attempts, first_at, last_at) VALUES ($1, $2, $3, $4, $5::text::jsonb, "
        f"$6::text::jsonb, $7, $8, $9, $10, $11, $12) RETURNING {_COLUMNS}",
        ctx.actor,
        action,
        target_type,
        target_id,
        _json(before),
        _json(after),
        ctx.request_id,
        ctx.client_addr,
        result,
        attempts,
        first_at,
        last_at,
    )
    assert row is not None
    return _entry(row)


def emit_audit_log(entry: AuditEntry) -> None:
    log.info(json.dumps({"event": "admin_audit", **entry.model_dump(mode="json")}, sort_keys=True))


class AuditedChange:
    """Handed to the body of `audited`: its connection (inside the transaction) and what to record."""

    def __init__(self, conn: Connection, target_id: str | None) -> None:
        self.conn = conn
        self.target_id = target_id
        self.before: Any = None
        self.after: Any = None
        self.entry: AuditEntry | None = None


@asynccontextmanager
async def audited(
    pool: asyncpg.Pool,
    ctx: AuditContext,
    *,
    action: str,
    target_type: str,
    target_id: str | None = None,
) -> AsyncIterator[AuditedChange]:
    """Run a change and its audit row in one transaction; set `before`/`after`/`target_id` inside."""
    with translate_db_errors():
        async with _audited(pool, ctx, action=action, target_type=target_type, target_id=target_id) as change:
            yield change


@asynccontextmanager
async def _audited(
    pool: asyncpg.Pool, ctx: AuditContext, *, action: str, target_type: str, target_id: str | None
) -> AsyncIterator[AuditedChange]:
    async with pool.acquire() as conn:
        change = AuditedChange(conn, target_id)
        try:
            async with conn.transaction():
                yield change
                change.entry = await write_audit(
                    conn,
                    ctx,
                    action=action,
                    target_type=target_type,
                    target_id=change.target_id,
                    before=change.before,
                    after=change.after,
                )
        except CrossLogicError as exc:
            # What was attempted (if the body got that far) next to why it was refused.
            after = {
                "error": {"code": exc.code, "message": exc.message},
                "attempted": _jsonable(change.after),
            }
            try:
                entry = await write_audit(
                    conn,
                    ctx,
                    action=action,
                    target_type=target_type,
                    target_id=change.target_id,
                    before=change.before,
                    after=after,
                    result="error",
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as audit_exc:
                # The database itself failed (e.g. the error was a lost connection): the client must
                # see the original error, and the attempt still reaches the log.
                log.error("could not write audit row for failed %s: %r", action, audit_exc)
            else:
                emit_audit_log(entry)
            raise
    if change.entry is not None:
        emit_audit_log(change.entry)


async def record_denied(
    db: Executor,
    ctx: AuditContext,
    *,
    action: str,
    target_id: str | None,
    reason: str,
    attempts: int = 1,
    first_at: datetime | None = None,
    last_at: datetime | None = None,
    target_type: str = "admin_api",
) -> None:
    """Best effort: a refused caller gets its 401/403 even when the database is unavailable."""
    try:
        entry = await write_audit(
            db,
            ctx,
            action=action,
            target_type=target_type,
            target_id=target_id,
            after={"reason": reason},
            result="denied",
            attempts=attempts,
            first_at=first_at,
            last_at=last_at,
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.error("could not write audit row for denied %s: %r", action, exc)
        return
    emit_audit_log(entry)


async def list_audit(db: Executor, query: AuditFilter) -> Page[AuditEntry]:
    clauses: list[str] = []
    args: list[Any] = []
    for column in ("actor", "action", "target_type", "target_id", "result"):
        value = getattr(query, column)
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    if query.since is not None:
        args.append(query.since)
        clauses.append(f"at >= ${len(args)}")
    if query.until is not None:
        args.append(query.until)
        clauses.append(f"at < ${len(args)}")
    if query.after is not None:
        if query.after < 1:
            raise InvalidRequestError("after must be a positive audit entry id", param="after")
        args.append(query.after)
        clauses.append(f"id < ${len(args)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(query.limit + 1)
    with translate_db_errors():
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM audit_log {where} ORDER BY id DESC LIMIT ${len(args)}", *args
        )
    return to_page(rows, query.limit, _entry)
