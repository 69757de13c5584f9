"""Batches on PostgreSQL: the status lifecycle, cancel, claiming with SKIP LOCKED, a dead runner's
claim taken over, a line's result recorded once, and tenant isolation."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from crosslogic.batches.lines import split_lines
from crosslogic.batches.store import BatchStore
from crosslogic.errors import InvalidRequestError, NotFoundError
from tests.unit.batches.batch_fixtures import chat_lines, new_tenant


async def _idle(db: asyncpg.Pool) -> None:
    # Other tests' batches must not be claimed here: park every active batch under a far claim.
    await db.execute("UPDATE batches SET claimed_by = 'parked', claim_expires_at = now() + interval '1 day' "
                     "WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')")


async def _create(store: BatchStore, tenant: uuid.UUID) -> str:
    batch = await store.create(tenant, None, endpoint="/v1/chat/completions", input_file_id="file-" + "0" * 32,
                               completion_window="24h", metadata={"k": "v"})
    return batch.id


async def test_create_get_list_and_isolation(db_pool: asyncpg.Pool) -> None:
    store = BatchStore(db_pool)
    owner, other = await new_tenant(db_pool), await new_tenant(db_pool)
    first, second = await _create(store, owner), await _create(store, owner)
    got = await store.get(owner, first)
    body = got.openai()
    assert body["status"] == "validating" and body["object"] == "batch" and body["metadata"] == {"k": "v"}
    assert body["expires_at"] - body["created_at"] == 24 * 3600
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    page, more = await store.page(owner, limit=1, after=None)
    assert [b.id for b in page] == [second] and more
    assert [b.id for b in (await store.page(owner, limit=5, after=second))[0]] == [first]
    for call in (store.get(other, first), store.cancel(other, first)):
        with pytest.raises(NotFoundError):
            await call
    assert (await store.page(other, limit=5, after=None))[0] == []
    assert (await store.get(owner, first)).status == "validating"  # the other's cancel changed nothing
    with pytest.raises(InvalidRequestError):
        await store.create(owner, None, endpoint="/v1/chat/completions", input_file_id="f",
                           completion_window="1h", metadata=None)


async def test_lifecycle_and_cancel(db_pool: asyncpg.Pool) -> None:
    store = BatchStore(db_pool)
    tenant = await new_tenant(db_pool)
    await _idle(db_pool)
    batch_id = await _create(store, tenant)
    claimed = await store.claim("r1", 30)
    assert claimed is not None and claimed.id == batch_id
    await store.add_lines(batch_id, split_lines(batch_id, chat_lines(3, malformed_at=(1,)), "/v1/chat/completions"))
    moved = await store.transition(batch_id, "r1", ("validating",), "in_progress")
    assert moved is not None and moved.in_progress_at is not None
    assert (moved.total, moved.completed, moved.failed) == (3, 0, 1)  # the malformed line failed alone
    # Only the holder moves it, only from the statuses given.
    assert await store.transition(batch_id, "r2", ("in_progress",), "finalizing") is None
    assert await store.transition(batch_id, "r1", ("validating",), "finalizing") is None
    pending = await store.pending(batch_id, 10)
    assert [line.line_no for line in pending] == [0, 2]
    assert await store.finish_line(batch_id, 0, True, {"id": "x"})
    assert not await store.finish_line(batch_id, 0, False, {"id": "again"})  # recorded once
    cancelled = await store.cancel(tenant, batch_id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    assert (await store.cancel(tenant, batch_id)).status == "cancelling"  # idempotent
    await store.fail_pending(batch_id, "batch_cancelled", "not run")
    done = await store.transition(batch_id, "r1", ("cancelling",), "cancelled")
    assert done is not None and (done.total, done.completed, done.failed) == (3, 1, 2)
    output, errors = await store.results(batch_id)
    assert output == [{"id": "x"}]
    assert [e["error"]["code"] for e in errors] == ["invalid_json_line", "batch_cancelled"]
    assert errors[1]["custom_id"] == "req-2"
    with pytest.raises(InvalidRequestError, match="completed"):  # a finished batch cannot be cancelled
        await store.cancel(tenant, await _completed(db_pool, store, tenant))


async def _completed(db: asyncpg.Pool, store: BatchStore, tenant: uuid.UUID) -> str:
    await _idle(db)
    batch_id = await _create(store, tenant)
    assert await store.claim("r9", 30) is not None
    before = ("validating", "in_progress", "finalizing")
    assert await store.transition(batch_id, "r9", before, "in_progress")
    assert await store.transition(batch_id, "r9", before, "finalizing")
    assert await store.transition(batch_id, "r9", before, "completed")
    return batch_id


async def test_claims_skip_locked_and_expire(db_pool: asyncpg.Pool) -> None:
    store = BatchStore(db_pool)
    tenant = await new_tenant(db_pool)
    await _idle(db_pool)
    ids = {await _create(store, tenant) for _ in range(3)}
    # Three runners at once: each gets a different batch, none gets one twice.
    claimed = await asyncio.gather(*(store.claim(f"r{i}", 30) for i in range(4)))
    got = [b.id for b in claimed if b is not None]
    assert sorted(got) == sorted(ids) and claimed.count(None) == 1
    # A runner that stops renewing loses its batch once the claim expires; its renewals then fail.
    victim = got[0]
    holder = next(b.claimed_by for b in claimed if b is not None and b.id == victim)
    assert holder is not None
    await db_pool.execute("UPDATE batches SET claim_expires_at = now() - interval '1 second' WHERE id = $1", victim)
    taken = await store.claim("r-new", 30)
    assert taken is not None and taken.id == victim
    assert await store.renew(victim, holder, 30) is None
    assert await store.renew(victim, "r-new", 30) is not None
    await store.release(victim, "r-new")
    assert (await store.claim("r-again", 30)) is not None
