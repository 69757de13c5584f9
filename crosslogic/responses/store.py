"""Stored responses in PostgreSQL (migration 0017), always read and deleted as one tenant.

Every statement carries the tenant in its WHERE clause: another tenant's id, a deleted one and an id
that never existed are the same 404, so an id says nothing about whether it exists elsewhere.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from crosslogic.errors import NotFoundError
from crosslogic.responses.ids import RESPONSE_ID
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor

ResponseStatus = Literal["completed", "incomplete", "failed", "cancelled"]
# A stored response is read on the request path (GET, previous_response_id): a stuck database must
# become a 503 the client can retry, not a request hanging on the pool.
STATEMENT_TIMEOUT_S = 5.0

_COLUMNS = (
    "id, tenant_id, key_id, request_id, model, status, previous_response_id, request, input_items, "
    "response, input_tokens, output_tokens, created_at"
)

_UPSERT = f"""
INSERT INTO responses ({_COLUMNS}, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now(), now())
ON CONFLICT (id) DO UPDATE
    SET status = EXCLUDED.status, response = EXCLUDED.response, input_tokens = EXCLUDED.input_tokens,
        output_tokens = EXCLUDED.output_tokens, updated_at = now()
    WHERE responses.tenant_id = EXCLUDED.tenant_id
"""
_SELECT = f"SELECT {_COLUMNS} FROM responses WHERE id = $1 AND tenant_id = $2"
_DELETE = "DELETE FROM responses WHERE id = $1 AND tenant_id = $2"


class StoredResponse(BaseModel):
    id: str
    tenant_id: UUID
    key_id: UUID | None
    request_id: str
    model: str
    status: ResponseStatus
    previous_response_id: str | None = None
    # The body as the client sent it.
    request: dict[str, Any]
    # The conversation this response answered (crosslogic/responses/history.py).
    input_items: list[dict[str, Any]]
    # The response object as the client received it.
    response: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0
    created_at: datetime | None = None


def not_found(response_id: str, param: str | None = None) -> NotFoundError:
    # OpenAI's wording; the id is the caller's own text, quoted back to it only.
    return NotFoundError(f"Response with id '{response_id[:100]}' not found.", param=param)


class ResponseStore:
    def __init__(self, db: Executor) -> None:
        self._db = db

    async def save(self, stored: StoredResponse) -> None:
        """Insert, or update the outcome of a response this tenant stored before (idempotent)."""
        with translate_db_errors():
            await self._db.execute(
                _UPSERT, stored.id, stored.tenant_id, stored.key_id, stored.request_id, stored.model,
                stored.status, stored.previous_response_id, _dumps(stored.request), _dumps(stored.input_items),
                _dumps(stored.response), stored.input_tokens, stored.output_tokens,
                timeout=STATEMENT_TIMEOUT_S,
            )

    async def get(self, tenant_id: UUID, response_id: str, *, param: str | None = None) -> StoredResponse:
        """The tenant's response `response_id`; NotFoundError (404) otherwise, whoever else has it."""
        if not RESPONSE_ID.match(response_id):
            raise not_found(response_id, param)
        with translate_db_errors():
            row = await self._db.fetchrow(_SELECT, response_id, tenant_id, timeout=STATEMENT_TIMEOUT_S)
        if row is None:
            raise not_found(response_id, param)
        record = dict(row)
        for field in ("request", "input_items", "response"):
            record[field] = json.loads(record[field])
        return StoredResponse.model_validate(record)

    async def delete(self, tenant_id: UUID, response_id: str) -> None:
        if not RESPONSE_ID.match(response_id):
            raise not_found(response_id)
        with translate_db_errors():
            status = await self._db.execute(_DELETE, response_id, tenant_id, timeout=STATEMENT_TIMEOUT_S)
        if status == "DELETE 0":
            raise not_found(response_id)


def _dumps(value: Any) -> str:
    # ASCII-only text: whatever a model generated (or a client sent) is stored without encoding issues.
    return json.dumps(value, separators=(",", ":"))
