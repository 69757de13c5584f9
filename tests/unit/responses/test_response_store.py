"""Stored responses on PostgreSQL: round trip, idempotent save, and tenant isolation (404, never 403)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from crosslogic.api.request_ids import mint_request_id
from crosslogic.errors import NotFoundError
from crosslogic.responses.ids import response_id
from crosslogic.responses.store import ResponseStore, StoredResponse
from crosslogic.tenants.models import TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant


async def _tenant(db: asyncpg.Pool) -> uuid.UUID:
    return (await create_tenant(db, TenantCreate(name=f"responses-{uuid.uuid4().hex[:8]}"))).id


def _stored(tenant: uuid.UUID, **fields: Any) -> StoredResponse:
    request_id = mint_request_id()
    rid = response_id(request_id)
    # What a client may send and a model may write: NUL escapes, astral characters, quotes.
    text = 'caf\u00e9 \U0001f600 "quoted" \x00 end'
    values: dict[str, Any] = {
        "id": rid, "tenant_id": tenant, "key_id": uuid.uuid4(), "request_id": request_id, "model": "m",
        "status": "completed", "request": {"model": "m", "input": text},
        "input_items": [{"type": "message", "role": "user", "content": text}],
        "response": {"id": rid, "object": "response", "status": "completed", "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]},
        "input_tokens": 7, "output_tokens": 3,
    }
    return StoredResponse.model_validate({**values, **fields})


async def test_round_trip_keeps_every_character(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    tenant = await _tenant(db_pool)
    stored = _stored(tenant)
    await store.save(stored)
    got = await store.get(tenant, stored.id)
    assert got.model_dump(exclude={"created_at"}) == stored.model_dump(exclude={"created_at"})
    assert got.created_at is not None


async def test_saving_again_updates_the_outcome(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    tenant = await _tenant(db_pool)
    stored = _stored(tenant, status="cancelled", output_tokens=0)
    await store.save(stored)
    await store.save(stored.model_copy(update={"status": "completed", "output_tokens": 9}))
    got = await store.get(tenant, stored.id)
    assert (got.status, got.output_tokens) == ("completed", 9)
    count = await db_pool.fetchval("SELECT count(*) FROM responses WHERE id = $1", stored.id)
    assert count == 1


async def test_another_tenant_can_neither_read_nor_delete(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    owner, other = await _tenant(db_pool), await _tenant(db_pool)
    stored = _stored(owner)
    await store.save(stored)
    with pytest.raises(NotFoundError) as read:
        await store.get(other, stored.id)
    with pytest.raises(NotFoundError) as deleted:
        await store.delete(other, stored.id)
    # The same answer as for an id nobody has: the id says nothing about another tenant.
    with pytest.raises(NotFoundError) as unknown:
        await store.get(other, response_id(mint_request_id()))
    assert read.value.status_code == deleted.value.status_code == unknown.value.status_code == 404
    assert read.value.message == f"Response with id '{stored.id}' not found."
    assert (await store.get(owner, stored.id)).id == stored.id  # still there for its owner


async def test_an_overwrite_from_another_tenant_changes_nothing(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    owner, other = await _tenant(db_pool), await _tenant(db_pool)
    stored = _stored(owner)
    await store.save(stored)
    await store.save(stored.model_copy(update={"tenant_id": other, "status": "failed"}))
    assert (await store.get(owner, stored.id)).status == "completed"


async def test_delete_then_gone(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    tenant = await _tenant(db_pool)
    stored = _stored(tenant)
    await store.save(stored)
    await store.delete(tenant, stored.id)
    with pytest.raises(NotFoundError):
        await store.get(tenant, stored.id)
    with pytest.raises(NotFoundError):
        await store.delete(tenant, stored.id)


@pytest.mark.parametrize("bad", ["", "resp_", "resp_XYZ", "req_" + "a" * 32, "resp_" + "a" * 32 + "'; --", "x" * 5000])
async def test_malformed_ids_are_not_found_without_a_query(db_pool: asyncpg.Pool, bad: str) -> None:
    with pytest.raises(NotFoundError) as caught:
        await ResponseStore(db_pool).get(uuid.uuid4(), bad, param="previous_response_id")
    assert caught.value.param == "previous_response_id"
    assert len(caught.value.message) < 200
