"""Billing fixtures: a fresh migrated database per test, a pool we may break, a local Stripe server.

Each test gets its own database because the exporter works on everything unexported in it; sharing
one would let one test's leftovers reach another test's Stripe server.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from billing.config import BillingConfig
from crosslogic.storage.migrations import apply_migrations

# The local Stripe server lives in tests/stripe_server (shared with the benchmark).
_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from billing_checks import (  # noqa: E402
    API_KEY,
    INPUT_METER,
    OUTPUT_METER,
    WEBHOOK_SECRET,
    BreakPool,
    TenantFactory,
)

from tests.stripe_server import StripeTestServer  # noqa: E402


@pytest.fixture
async def billing_db_url(empty_database_url: str) -> str:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return empty_database_url


@pytest.fixture
def app_name() -> str:
    # Tagging our connections lets a test terminate exactly them (a PostgreSQL blip), nothing else.
    return f"billing-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def pool(billing_db_url: str, app_name: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        billing_db_url, min_size=1, max_size=8, server_settings={"application_name": app_name}
    )
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def admin_conn(billing_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A separate connection (not in `pool`) for assertions and for terminating `pool`'s backends."""
    conn = await asyncpg.connect(billing_db_url)
    yield conn
    await conn.close()


@pytest.fixture
async def stripe_server() -> AsyncIterator[StripeTestServer]:
    server = StripeTestServer(API_KEY, meters={INPUT_METER, OUTPUT_METER})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def billing_config(stripe_server: StripeTestServer) -> BillingConfig:
    return BillingConfig(
        enabled=True,
        stripe_api_key=API_KEY,
        stripe_api_base=stripe_server.base_url,
        webhook_secret=WEBHOOK_SECRET,
        input_meter_event=INPUT_METER,
        output_meter_event=OUTPUT_METER,
        interval_s=0.05,
        claim_batch=50,
        lease_s=2.0,
        request_timeout_s=0.5,
        retry_base_s=0.02,
        retry_max_s=0.2,
        missing_customer_retry_s=0.2,
        webhook_poll_s=0.05,
    )


@pytest.fixture
def make_tenant(
    admin_conn: asyncpg.Connection, stripe_server: StripeTestServer
) -> TenantFactory:
    async def make(customer: str | None = "auto", *, known_to_stripe: bool = True) -> uuid.UUID:
        tenant_id = uuid.uuid4()
        if customer == "auto":
            customer = f"cus_{tenant_id.hex[:14]}"
        await admin_conn.execute(
            "INSERT INTO tenants (id, name, stripe_customer_id) VALUES ($1, $2, $3)",
            tenant_id, f"tenant-{tenant_id.hex[:8]}", customer,
        )
        if customer and known_to_stripe:
            stripe_server.customers.add(customer)
        return tenant_id

    return make


@pytest.fixture
def break_pool(admin_conn: asyncpg.Connection, app_name: str) -> BreakPool:
    """Kill every server backend of `pool` (what a PostgreSQL restart looks like to the client)."""

    async def kill() -> int:
        rows = await admin_conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            app_name,
        )
        return len(rows)

    return kill
