"""The usage ledger writer: batching, idempotency, a PostgreSQL blip, overflow, shutdown flush."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest
from billing_checks import usage

from crosslogic.metering import UsageRecorder, UsageStatus


async def _count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM usage_ledger"))


async def test_records_are_batched_and_idempotent(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection
) -> None:
    recorder = UsageRecorder(pool, batch_size=50, flush_interval_s=0.01)
    recorder.start()
    tenant = uuid.uuid4()
    records = [usage(tenant) for _ in range(120)]
    for record in records:
        recorder.record(record)
    # The same request ids again (a retried settle): still one row each.
    for record in records[:30]:
        recorder.record(record)
    await recorder.close()
    assert await _count(admin_conn) == 120
    assert recorder.metrics.get("written_total") == 150
    row = await admin_conn.fetchrow(
        "SELECT * FROM usage_ledger WHERE request_id = $1", records[0].request_id
    )
    assert row["tenant_id"] == tenant and row["prompt_tokens"] == 10
    assert row["status"] == "finished" and row["created_at"] == records[0].created_at


async def test_cancelled_and_failed_requests_are_recorded(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection
) -> None:
    recorder = UsageRecorder(pool, flush_interval_s=0.01)
    recorder.start()
    tenant = uuid.uuid4()
    recorder.record(usage(tenant, 7, 3, status=UsageStatus.CANCELLED))
    recorder.record(usage(tenant, 9, 0, status=UsageStatus.FAILED))
    await recorder.close()
    rows = await admin_conn.fetch(
        "SELECT status, prompt_tokens, completion_tokens FROM usage_ledger ORDER BY status"
    )
    assert [tuple(r) for r in rows] == [("cancelled", 7, 3), ("failed", 9, 0)]


async def test_survives_postgres_blip_without_loss(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, break_pool
) -> None:
    recorder = UsageRecorder(pool, batch_size=20, flush_interval_s=0.005, retry_base_s=0.01)
    recorder.start()
    tenant = uuid.uuid4()

    async def produce() -> None:
        for _ in range(400):
            recorder.record(usage(tenant))
            await asyncio.sleep(0.001)

    producer = asyncio.create_task(produce())
    killed = 0
    for _ in range(5):
        await asyncio.sleep(0.05)
        killed += await break_pool()
    await producer
    await recorder.close()
    assert killed > 0
    assert await _count(admin_conn) == 400
    assert recorder.metrics.get("dropped_total") == 0


async def test_overflow_is_counted_and_alerted(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = UsageRecorder(pool, max_buffer=10)  # not started: nothing drains the buffer
    tenant = uuid.uuid4()
    with caplog.at_level(logging.ERROR, logger="crosslogic.alerts"):
        for _ in range(15):
            recorder.record(usage(tenant))
    assert recorder.metrics.get("dropped_total") == 5
    assert any(getattr(r, "alert", None) == "usage_ledger_overflow" for r in caplog.records)
    await recorder.flush()
    assert await _count(admin_conn) == 10


async def test_close_flushes_everything_buffered(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection
) -> None:
    recorder = UsageRecorder(pool, batch_size=1000, flush_interval_s=60)
    recorder.start()
    for _ in range(37):
        recorder.record(usage(uuid.uuid4()))
    await recorder.close()
    assert await _count(admin_conn) == 37 and recorder.pending == 0


def test_record_rejects_impossible_values() -> None:
    with pytest.raises(ValueError):
        usage(uuid.uuid4(), prompt=-1)
