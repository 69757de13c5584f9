"""Batches and their lines in PostgreSQL (migration 0018).

Requests read and cancel as one tenant (another tenant's id: 404). Runners claim a batch with
`FOR UPDATE SKIP LOCKED` and hold it by renewing `claim_expires_at`; a claim left to expire (the
replica died) is taken over by the next runner that looks, which resumes from the lines still pending.
A line's result is written only while it is pending, so it is counted once however often it ran.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from crosslogic.batches.ids import BATCH_ID, new_batch_id
from crosslogic.errors import InvalidRequestError, NotFoundError
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
BatchEndpoint = Literal["/v1/chat/completions", "/v1/embeddings"]
ACTIVE: tuple[str, ...] = ("validating", "in_progress", "finalizing", "cancelling")
STATEMENT_TIMEOUT_S = 5.0
COMPLETION_WINDOWS = {"24h": 24 * 3600}

_COLUMNS = (
    "id, tenant_id, key_id, endpoint, input_file_id, completion_window, status, metadata, errors, "
    "output_file_id, error_file_id, total, completed, failed, claimed_by, claim_expires_at, created_at, "
    "expires_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at, "
    "model_scopes"
)
_TIMES = ("created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
          "expired_at", "cancelling_at", "cancelled_at")


class Batch(BaseModel):
    id: str
    tenant_id: UUID
    key_id: UUID | None
    endpoint: BatchEndpoint
    input_file_id: str
    completion_window: str
    status: BatchStatus
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None
    # The creating key's model scopes (migration 0020); None: any model.
    model_scopes: list[str] | None = None

    def allows_model(self, model: str) -> bool:
        return not self.model_scopes or model in self.model_scopes

    def openai(self) -> dict[str, Any]:
        """The Batch object the official client reads."""
        body: dict[str, Any] = {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }
        for name in _TIMES:
            value = getattr(self, name)
            body[name] = None if value is None else int(value.timestamp())
        return body


class Line(BaseModel):
    line_no: int
    custom_id: str | None
    request_id: str
    body: dict[str, Any] | None


def not_found(batch_id: str) -> NotFoundError:
    return NotFoundError(f"No batch found with id '{batch_id[:100]}'.")


def _batch(row: Any) -> Batch:
    record = dict(row)
    for name in ("metadata", "errors"):
        if record[name] is not None:
            record[name] = json.loads(record[name])
    return Batch.model_validate(record)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class BatchStore:
    def __init__(self, db: Executor) -> None:
        self._db = db

    async def create(
        self, tenant_id: UUID, key_id: UUID | None, *, endpoint: BatchEndpoint, input_file_id: str,
        completion_window: str, metadata: dict[str, str] | None, model_scopes: frozenset[str] = frozenset(),
    ) -> Batch:
        window_s = COMPLETION_WINDOWS.get(completion_window)
        if window_s is None:
            raise InvalidRequestError(
                f"completion_window must be one of {sorted(COMPLETION_WINDOWS)}", param="completion_window")
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"""INSERT INTO batches (id, tenant_id, key_id, endpoint, input_file_id, completion_window,
                        status, metadata, expires_at, model_scopes)
                    VALUES ($1, $2, $3, $4, $5, $6, 'validating', $7, now() + make_interval(secs => $8), $9)
                    RETURNING {_COLUMNS}""",
                new_batch_id(), tenant_id, key_id, endpoint, input_file_id, completion_window,
                None if metadata is None else _dumps(metadata), float(window_s), sorted(model_scopes) or None,
                timeout=STATEMENT_TIMEOUT_S,
            )
        return _batch(row)

    async def get(self, tenant_id: UUID, batch_id: str) -> Batch:
        if not BATCH_ID.match(batch_id):
            raise not_found(batch_id)
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"SELECT {_COLUMNS} FROM batches WHERE id = $1 AND tenant_id = $2", batch_id, tenant_id,
                timeout=STATEMENT_TIMEOUT_S)
        if row is None:
            raise not_found(batch_id)
        return _batch(row)

    async def page(self, tenant_id: UUID, *, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        with translate_db_errors():
            rows = await self._db.fetch(
                f"""SELECT {_COLUMNS} FROM batches
                    WHERE tenant_id = $1 AND ($2::text IS NULL OR (created_at, id) < (
                        SELECT created_at, id FROM batches WHERE id = $2 AND tenant_id = $1))
                    ORDER BY created_at DESC, id DESC LIMIT $3""",
                tenant_id, after, limit + 1, timeout=STATEMENT_TIMEOUT_S)
        batches = [_batch(row) for row in rows]
        return batches[:limit], len(batches) > limit

    async def cancel(self, tenant_id: UUID, batch_id: str) -> Batch:
        """validating / in_progress become cancelling (the runner finishes the job); a batch already
        past that is answered as it is, like OpenAI's 'cannot cancel' only where it is final."""
        batch = await self.get(tenant_id, batch_id)
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"""UPDATE batches SET status = 'cancelling', cancelling_at = now()
                    WHERE id = $1 AND tenant_id = $2 AND status IN ('validating', 'in_progress')
                    RETURNING {_COLUMNS}""",
                batch_id, tenant_id, timeout=STATEMENT_TIMEOUT_S)
        if row is not None:
            return _batch(row)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        raise InvalidRequestError(
            f"Cannot cancel a batch with status '{batch.status}'.", code="batch_not_cancellable")

    # The runner's side.

    async def claim(self, runner: str, ttl_s: float) -> Batch | None:
        """The oldest batch with work that nobody holds (or whose holder's claim expired)."""
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"""UPDATE batches SET claimed_by = $1, claim_expires_at = now() + make_interval(secs => $2)
                    WHERE id = (
                        SELECT id FROM batches
                        WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
                          AND (claim_expires_at IS NULL OR claim_expires_at < now())
                        ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING {_COLUMNS}""",
                runner, ttl_s, timeout=STATEMENT_TIMEOUT_S)
        return None if row is None else _batch(row)

    async def renew(self, batch_id: str, runner: str, ttl_s: float) -> Batch | None:
        """Extend this runner's claim; None if it lost the claim (another runner took over)."""
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"""UPDATE batches SET claim_expires_at = now() + make_interval(secs => $3)
                    WHERE id = $1 AND claimed_by = $2 RETURNING {_COLUMNS}""",
                batch_id, runner, ttl_s, timeout=STATEMENT_TIMEOUT_S)
        return None if row is None else _batch(row)

    async def release(self, batch_id: str, runner: str) -> None:
        with translate_db_errors():
            await self._db.execute(
                "UPDATE batches SET claimed_by = NULL, claim_expires_at = NULL WHERE id = $1 AND claimed_by = $2",
                batch_id, runner, timeout=STATEMENT_TIMEOUT_S)

    async def transition(
        self, batch_id: str, runner: str, from_status: tuple[str, ...], to_status: BatchStatus,
        **fields: Any,
    ) -> Batch | None:
        """Move the batch on, only from the statuses given and only while this runner holds it."""
        assignments = [f"status = '{to_status}'"]
        stamp = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
                 "failed": "failed_at", "expired": "expired_at", "cancelled": "cancelled_at"}.get(to_status)
        if stamp:
            assignments.append(f"{stamp} = now()")
        values: list[Any] = [batch_id, runner, list(from_status)]
        for name, value in fields.items():
            if name not in ("output_file_id", "error_file_id", "total", "errors"):
                raise ValueError(name)
            values.append(_dumps(value) if name == "errors" else value)
            assignments.append(f"{name} = ${len(values)}")
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"""UPDATE batches SET {', '.join(assignments)}
                    WHERE id = $1 AND claimed_by = $2 AND status = ANY($3::text[]) RETURNING {_COLUMNS}""",
                *values, timeout=STATEMENT_TIMEOUT_S)
        return None if row is None else _batch(row)

    async def add_lines(self, batch_id: str, lines: list[tuple[int, str | None, str, str, Any, Any]]) -> None:
        """(line_no, custom_id, request_id, status, body, result) rows; existing ones are kept as they are
        (a validation resumed after a crash re-adds what it had added)."""
        with translate_db_errors():
            await self._db.executemany(
                """INSERT INTO batch_lines (batch_id, line_no, custom_id, request_id, status, body, result)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (batch_id, line_no) DO NOTHING""",
                [(batch_id, no, cid, rid, status, None if body is None else _dumps(body),
                  None if result is None else _dumps(result)) for no, cid, rid, status, body, result in lines],
                timeout=STATEMENT_TIMEOUT_S * 4)
        await self._recount(batch_id)

    async def pending(self, batch_id: str, limit: int) -> list[Line]:
        with translate_db_errors():
            rows = await self._db.fetch(
                """SELECT line_no, custom_id, request_id, body FROM batch_lines
                   WHERE batch_id = $1 AND status = 'pending' ORDER BY line_no LIMIT $2""",
                batch_id, limit, timeout=STATEMENT_TIMEOUT_S)
        return [Line(line_no=r["line_no"], custom_id=r["custom_id"], request_id=r["request_id"],
                     body=json.loads(r["body"]) if r["body"] is not None else None) for r in rows]

    async def finish_line(self, batch_id: str, line_no: int, ok: bool, result: dict[str, Any]) -> bool:
        """Record a line's result once: False if it was already done (another runner got there first)."""
        status = "completed" if ok else "failed"
        with translate_db_errors():
            done = await self._db.execute(
                """WITH line AS (
                       UPDATE batch_lines SET status = $3, result = $4, body = NULL
                       WHERE batch_id = $1 AND line_no = $2 AND status = 'pending' RETURNING status)
                   UPDATE batches SET completed = completed + (SELECT count(*) FROM line WHERE status = 'completed'),
                                      failed = failed + (SELECT count(*) FROM line WHERE status = 'failed')
                   WHERE id = $1 AND EXISTS (SELECT 1 FROM line)""",
                batch_id, line_no, status, _dumps(result), timeout=STATEMENT_TIMEOUT_S)
        return bool(done != "UPDATE 0")

    async def fail_pending(self, batch_id: str, code: str, message: str) -> None:
        """Every pending line fails with `code` (cancelled or expired batch)."""
        with translate_db_errors():
            await self._db.execute(
                """UPDATE batch_lines SET status = 'failed', body = NULL, result = json_build_object(
                       'id', 'batch_req_' || substr(request_id, 5), 'custom_id', custom_id, 'response', NULL,
                       'error', json_build_object('code', $2::text, 'message', $3::text))
                   WHERE batch_id = $1 AND status = 'pending'""",
                batch_id, code, message, timeout=STATEMENT_TIMEOUT_S * 4)
        await self._recount(batch_id)

    async def _recount(self, batch_id: str) -> None:
        with translate_db_errors():
            await self._db.execute(
                """UPDATE batches SET
                       total = (SELECT count(*) FROM batch_lines WHERE batch_id = $1),
                       completed = (SELECT count(*) FROM batch_lines WHERE batch_id = $1 AND status = 'completed'),
                       failed = (SELECT count(*) FROM batch_lines WHERE batch_id = $1 AND status = 'failed')
                   WHERE id = $1""",
                batch_id, timeout=STATEMENT_TIMEOUT_S)

    async def results(self, batch_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(output lines, error lines) in input order."""
        with translate_db_errors():
            rows = await self._db.fetch(
                "SELECT status, result FROM batch_lines WHERE batch_id = $1 AND status <> 'pending' ORDER BY line_no",
                batch_id, timeout=STATEMENT_TIMEOUT_S * 4)
        output = [json.loads(r["result"]) for r in rows if r["status"] == "completed"]
        errors = [json.loads(r["result"]) for r in rows if r["status"] == "failed"]
        return output, errors
