"""Exactly-once export under faults: after recovery Stripe's totals equal the ledger's, to the token.

Each test runs a steady stream of usage through the real recorder while exporters run, breaks
something (Stripe, the exporter, PostgreSQL), heals it, drains, and compares per customer, meter and
UTC hour. Usage for past hours keeps arriving during the run (late deltas for exported hours).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from billing_checks import (
    INPUT_METER,
    OUTPUT_METER,
    BreakPool,
    TenantFactory,
    ledger_totals,
    usage,
)

from billing.config import BillingConfig
from billing.exporter import MeterExporter
from billing.stripe_sender import StripeMeterSender
from crosslogic.metering import UsageRecorder, UsageStatus
from crosslogic.supervisor import supervise
from tests.stripe_server import StripeTestServer

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def steady_usage(
    pool: asyncpg.Pool, tenants: list, *, rate_hz: float = 400
) -> AsyncIterator[UsageRecorder]:
    """Record usage continuously (some cancelled, some for earlier hours) until the block exits."""
    recorder = UsageRecorder(pool, batch_size=100, flush_interval_s=0.02, retry_base_s=0.01)
    recorder.start()
    rng = random.Random(7)
    now = datetime.now(UTC)
    past = [now, now, now, now - timedelta(hours=1), now - timedelta(hours=5), now - timedelta(days=2)]

    async def produce() -> None:
        while True:
            status = rng.choice([UsageStatus.FINISHED] * 6 + [UsageStatus.CANCELLED, UsageStatus.FAILED])
            recorder.record(
                usage(rng.choice(tenants), rng.randint(1, 900), rng.randint(0, 300),
                      status=status, created_at=rng.choice(past))
            )
            await asyncio.sleep(1 / rate_hz)

    task = asyncio.create_task(produce())
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await recorder.close()


def start_exporter(exporter: MeterExporter) -> asyncio.Task[None]:
    return asyncio.create_task(
        supervise("billing_export", exporter.run_forever, metrics=exporter.metrics,
                  backoff_base_s=0.05, backoff_max_s=0.2)
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def drain(exporter: MeterExporter, conn: asyncpg.Connection, timeout_s: float = 60) -> None:
    """Run export cycles until nothing is left to send (leases from killed exporters included)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        await exporter.run_cycle()
        left = await conn.fetchval(
            "SELECT (SELECT count(*) FROM billing_outbox WHERE status = 'pending')"
            " + (SELECT count(*) FROM usage_ledger WHERE outbox_batch IS NULL)"
        )
        if left == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("export did not drain")


async def assert_exact(
    conn: asyncpg.Connection, server: StripeTestServer, *, min_rows: int = 500
) -> None:
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger") >= min_rows
    assert await conn.fetchval("SELECT count(*) FROM billing_outbox WHERE status = 'dead'") == 0
    expected = await ledger_totals(conn, (INPUT_METER, OUTPUT_METER))
    assert server.hourly_totals() == expected
    # Every event Stripe holds is one outbox row: nothing doubled under another identifier.
    delivered = await conn.fetchval("SELECT count(*) FROM billing_outbox WHERE status = 'delivered'")
    assert len(server.events) == delivered


async def test_stripe_failing_half_the_calls_and_timing_out(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, stripe_server: StripeTestServer,
    billing_config: BillingConfig, make_tenant: TenantFactory,
) -> None:
    tenants = [await make_tenant() for _ in range(4)]
    f = stripe_server.faults
    f.rate_500, f.rate_429, f.slow_s = 0.3, 0.15, 1.0
    f.rate_timeout_before = f.rate_timeout_after = f.rate_drop_before = f.rate_drop_after = 0.05
    senders = [StripeMeterSender(billing_config) for _ in range(2)]
    # Two exporters at once: SKIP LOCKED + leases must keep them from sending anything twice.
    exporters = [MeterExporter(pool, billing_config, s, owner=f"exp-{i}") for i, s in enumerate(senders)]
    async with steady_usage(pool, tenants):
        tasks = [start_exporter(e) for e in exporters]
        await asyncio.sleep(4)
    for task in tasks:
        await stop(task)
    failed = sum(stripe_server.calls[k] for k in ("500", "429", "timeout_before", "timeout_after",
                                                   "drop_before", "drop_after"))
    assert failed >= 0.4 * stripe_server.calls["total"]
    assert stripe_server.calls["timeout_after"] > 0, dict(stripe_server.calls)
    stripe_server.faults = type(f)()
    await drain(exporters[0], admin_conn)
    await assert_exact(admin_conn, stripe_server)
    # Answers lost after Stripe stored the event come back as "already exists" = delivered.
    assert stripe_server.calls["duplicate"] > 0
    for s in senders:
        await s.aclose()


async def test_exporter_killed_mid_batch_and_restarted(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, stripe_server: StripeTestServer,
    billing_config: BillingConfig, make_tenant: TenantFactory,
) -> None:
    tenants = [await make_tenant() for _ in range(3)]
    sender = StripeMeterSender(billing_config)
    async with steady_usage(pool, tenants):
        for round_ in range(3):
            # Slow answers keep a batch in flight; the kill lands while Stripe holds events whose
            # answers the exporter never saw.
            stripe_server.faults.rate_timeout_after, stripe_server.faults.slow_s = 0.5, 0.3
            stripe_server.request_started.clear()
            task = start_exporter(MeterExporter(pool, billing_config, sender, owner=f"a{round_}"))
            await asyncio.wait_for(stripe_server.request_started.wait(), 10)
            await asyncio.sleep(0.1)
            await stop(task)
            in_flight = await admin_conn.fetchval(
                "SELECT count(*) FROM billing_outbox WHERE status = 'pending' AND lease_owner IS NOT NULL"
            )
            assert in_flight > 0
            stripe_server.faults.rate_timeout_after = 0
            task = start_exporter(MeterExporter(pool, billing_config, sender, owner=f"b{round_}"))
            await asyncio.sleep(1.0)
            await stop(task)
    await drain(MeterExporter(pool, billing_config, sender, owner="final"), admin_conn)
    await assert_exact(admin_conn, stripe_server, min_rows=200)
    await sender.aclose()


async def test_postgres_connections_broken_mid_run(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, stripe_server: StripeTestServer,
    billing_config: BillingConfig, make_tenant: TenantFactory, break_pool: BreakPool,
) -> None:
    tenants = [await make_tenant() for _ in range(3)]
    sender = StripeMeterSender(billing_config)
    exporter = MeterExporter(pool, billing_config, sender, owner="pg-blip")
    stripe_server.faults.rate_500 = 0.1
    killed = 0
    async with steady_usage(pool, tenants) as recorder:
        task = start_exporter(exporter)
        rounds = 0
        # At least 12 rounds of broken connections, and on until the usage written is worth checking
        # (a loaded machine produced 380 records in 12 rounds, fewer than assert_exact wants).
        while rounds < 12 or (recorder.metrics.get("enqueued_total") < 600 and rounds < 120):
            await asyncio.sleep(0.25)
            killed += await break_pool()
            rounds += 1
        await asyncio.sleep(0.5)
        await stop(task)
    assert killed > 0
    assert recorder.metrics.get("dropped_total") == 0
    stripe_server.faults.rate_500 = 0
    await drain(exporter, admin_conn)
    await assert_exact(admin_conn, stripe_server)
    await sender.aclose()
