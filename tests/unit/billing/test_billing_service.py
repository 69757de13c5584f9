"""BillingService end to end (no Ray): loops under the supervisor; an exporter process SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import pytest
from billing_checks import (
    API_KEY,
    INPUT_METER,
    OUTPUT_METER,
    WEBHOOK_SECRET,
    TenantFactory,
    ledger_totals,
    usage,
)

from billing.config import BillingConfig
from billing.exporter import MeterExporter
from billing.service import BillingService
from billing.stripe_sender import StripeMeterSender
from crosslogic.metering import UsageRecorder
from tests.stripe_server import StripeTestServer

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[3]


async def wait_for(predicate, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_service_exports_and_processes_and_stops(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, stripe_server: StripeTestServer,
    billing_config: BillingConfig, make_tenant: TenantFactory,
) -> None:
    tenant = await make_tenant()
    service = BillingService(pool, billing_config)
    service.start()
    assert sorted(service.status()["running"]) == ["billing-export", "billing-webhooks"]
    recorder = UsageRecorder(pool)
    for _ in range(20):
        recorder.record(usage(tenant, 3, 4))
    await recorder.flush()

    async def exported() -> bool:
        return stripe_server.hourly_totals() == await ledger_totals(
            admin_conn, (INPUT_METER, OUTPUT_METER))

    await wait_for(exported)
    await service.stop()
    assert service.status()["running"] == []


async def test_disabled_service_runs_nothing(pool: asyncpg.Pool) -> None:
    service = BillingService(pool, BillingConfig())
    service.start()
    assert service.status() == {"enabled": False, "running": [], "metrics": {}}
    await service.stop()


async def test_exporter_process_sigkilled_mid_batch(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, stripe_server: StripeTestServer,
    billing_config: BillingConfig, make_tenant: TenantFactory, billing_db_url: str,
) -> None:
    tenants = [await make_tenant() for _ in range(3)]
    recorder = UsageRecorder(pool)
    for i in range(600):
        recorder.record(usage(tenants[i % 3], 11, 7))
    await recorder.flush()
    # Every answer is slow, and stored before it is sent: the kill lands with Stripe holding events
    # the dead process never heard about.
    stripe_server.faults.rate_timeout_after, stripe_server.faults.slow_s = 1.0, 0.5
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{Path(__file__).parent}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).parent / "exporter_process.py"), billing_db_url,
        stripe_server.base_url, API_KEY, WEBHOOK_SECRET, env=env, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).startswith(b"started")

        async def in_flight() -> bool:
            return len(stripe_server.events) >= 2

        await wait_for(in_flight)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    leased = await admin_conn.fetchval(
        "SELECT count(*) FROM billing_outbox WHERE status = 'pending' AND lease_owner IS NOT NULL")
    assert leased > 0
    stripe_server.faults.rate_timeout_after = 0
    sender = StripeMeterSender(billing_config)
    exporter = MeterExporter(pool, billing_config, sender, owner="after-kill")

    async def drained() -> bool:
        await exporter.run_cycle()
        return await admin_conn.fetchval(
            "SELECT count(*) FROM billing_outbox WHERE status <> 'delivered'") == 0

    await wait_for(drained)
    assert stripe_server.hourly_totals() == await ledger_totals(admin_conn, (INPUT_METER, OUTPUT_METER))
    assert stripe_server.calls["duplicate"] > 0
    await sender.aclose()
