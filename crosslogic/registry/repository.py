"""The `models` table. Functions take a connection (or pool) so callers can share a transaction."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from crosslogic.errors import ModelNotFoundError
from crosslogic.registry.templates import ModelRecord, ModelTemplate
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor
from crosslogic.storage.pagination import Page, check_page_size, to_page, unknown_cursor

_COLUMNS = (
    "id, served_name, source, task, parameter_count, dtype, max_model_len, tensor_parallel_size, "
    "num_layers, num_kv_heads, head_dim, price_input_per_mtok, price_output_per_mtok, "
    "created_at, updated_at"
)


def _record(row: asyncpg.Record) -> ModelRecord:
    return ModelRecord.model_validate(dict(row))


async def create_model(db: Executor, template: ModelTemplate) -> ModelRecord:
    values: dict[str, Any] = template.model_dump()
    names = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    sql = (
        f"INSERT INTO models ({', '.join(names)}) VALUES ({placeholders}) "
        f"RETURNING {_COLUMNS}"
    )
    with translate_db_errors(
        conflict=f"a model named {template.served_name!r} already exists", param="served_name"
    ):
        row = await db.fetchrow(sql, *values.values())
    assert row is not None
    return _record(row)


async def get_model(db: Executor, model_id: UUID) -> ModelRecord:
    with translate_db_errors():
        row = await db.fetchrow(f"SELECT {_COLUMNS} FROM models WHERE id = $1", model_id)
    if row is None:
        raise ModelNotFoundError(f"no model with id {model_id}", param="model_id")
    return _record(row)


async def get_model_by_name(db: Executor, served_name: str) -> ModelRecord | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM models WHERE served_name = $1", served_name)
    return None if row is None else _record(row)


async def list_models(db: Executor, *, limit: int, after: UUID | None = None) -> Page[ModelRecord]:
    """Models in creation order; `after` is the id of the last model of the previous page."""
    check_page_size(limit)
    with translate_db_errors():
        if after is None:
            rows = await db.fetch(
                f"SELECT {_COLUMNS} FROM models ORDER BY created_at, id LIMIT $1", limit + 1
            )
        else:
            cursor = await db.fetchrow("SELECT created_at FROM models WHERE id = $1", after)
            if cursor is None:
                raise unknown_cursor(after)
            rows = await db.fetch(
                f"SELECT {_COLUMNS} FROM models WHERE (created_at, id) > ($1, $2) "
                "ORDER BY created_at, id LIMIT $3",
                cursor["created_at"],
                after,
                limit + 1,
            )
    return to_page(rows, limit, _record)


async def delete_model(db: Executor, model_id: UUID) -> ModelRecord:
    """Delete and return the deleted row (the audit log keeps it as `before`)."""
    with translate_db_errors():
        row = await db.fetchrow(f"DELETE FROM models WHERE id = $1 RETURNING {_COLUMNS}", model_id)
    if row is None:
        raise ModelNotFoundError(f"no model with id {model_id}", param="model_id")
    return _record(row)
