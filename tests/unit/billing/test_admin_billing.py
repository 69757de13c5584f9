"""Admin side: usage reports with cost, dead letters and replay, reconciliation, held tenants."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest
from billing_checks import INPUT_METER, OUTPUT_METER, TenantFactory, ledger_totals, usage
from fastapi import FastAPI

from billing.admin_routes import build_billing_admin_router
from billing.config import BillingConfig
from billing.exporter import MeterExporter
from billing.reconcile import reconcile
from billing.stripe_sender import StripeMeterSender
from crosslogic.admin.deps import AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier, AdminScope
from crosslogic.admin.local_secret import mint_admin_token
from crosslogic.api.errors import install_error_handlers
from crosslogic.metering import UsageRecorder, UsageStatus
from crosslogic.metering.routes import build_usage_router
from tests.stripe_server import StripeTestServer

SECRET = "billing-Adm1n-S3cret-f0r-Unit-Tests-0192837465"


@pytest.fixture
async def admin(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=SECRET))
    deps = AdminDeps(pool=pool, verifier=verifier)
    app = FastAPI()
    install_error_handlers(app)
    reader, writer = require_scope(deps, AdminScope.READ), require_scope(deps, AdminScope.WRITE)
    app.include_router(build_usage_router(pool, reader), prefix="/admin/v1")
    app.include_router(build_billing_admin_router(pool, reader, writer), prefix="/admin/v1")
    token = mint_admin_token(SECRET, subject="ops@example.com", scopes=["admin:write"], ttl_s=300)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test",
        headers={"authorization": f"Bearer {token}"},
    ) as client:
        yield client
    await verifier.aclose()


async def record(pool: asyncpg.Pool, *records) -> None:
    recorder = UsageRecorder(pool)
    for r in records:
        recorder.record(r)
    await recorder.flush()


async def test_usage_report_groups_and_prices(
    admin: httpx.AsyncClient, pool: asyncpg.Pool, admin_conn: asyncpg.Connection,
    make_tenant: TenantFactory,
) -> None:
    await admin_conn.execute(
        "INSERT INTO models (served_name, source, parameter_count, dtype, max_model_len, "
        "price_input_per_mtok, price_output_per_mtok) VALUES ('smollm2-135m', 'x', 135000000, "
        "'bf16', 2048, 0.5, 2.0)")
    a, b = await make_tenant(), await make_tenant()
    day = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    await record(
        pool,
        usage(a, 1000, 500, created_at=day),
        usage(a, 2000, 0, status=UsageStatus.CANCELLED, created_at=day + timedelta(hours=1)),
        usage(b, 4000, 1000, status=UsageStatus.FAILED, created_at=day),
    )
    response = await admin.get("/admin/v1/usage", params={"group_by": "tenant"})
    assert response.status_code == 200, response.text
    by_tenant = response.json()
    rows = {r["group"]: r for r in by_tenant["data"]}
    assert rows[str(a)]["requests"] == 2 and rows[str(a)]["cancelled"] == 1
    assert rows[str(a)]["prompt_tokens"] == 3000 and rows[str(a)]["completion_tokens"] == 500
    # 3000 * 0.5 / 1e6 + 500 * 2.0 / 1e6
    assert Decimal(rows[str(a)]["cost"]) == Decimal("0.0025")
    hours = (await admin.get("/admin/v1/usage", params={"group_by": "hour", "tenant_id": str(a)})).json()
    assert [r["group"] for r in hours["data"]] == ["2026-11-26T10:00:00Z", "2026-11-26T11:00:00Z"]
    window = await admin.get("/admin/v1/usage", params={
        "group_by": "day", "start": "2026-11-26T11:00:00Z", "end": "2026-11-27T00:00:00Z"})
    assert [(r["group"], r["requests"]) for r in window.json()["data"]] == [("2026-11-26", 1)]


@pytest.mark.parametrize("params", [
    {"group_by": "planet"}, {"tenant_id": "not-a-uuid"},
    {"start": "2026-11-27T00:00:00Z", "end": "2026-11-26T00:00:00Z"}, {"start": "2026-11-27T00:00:00"},
])
async def test_usage_report_bad_input_is_a_400(admin: httpx.AsyncClient, params: dict) -> None:
    response = await admin.get("/admin/v1/usage", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_usage_report_requires_admin_token(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/admin/v1/usage", headers={"authorization": "Bearer nope"})
    assert response.status_code == 401


async def test_poison_event_is_dead_lettered_and_replayed(
    admin: httpx.AsyncClient, pool: asyncpg.Pool, admin_conn: asyncpg.Connection,
    stripe_server: StripeTestServer, billing_config: BillingConfig, make_tenant: TenantFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The customer id is wrong (Stripe answers 404 resource_missing): retrying cannot help.
    tenant = await make_tenant("cus_typo", known_to_stripe=False)
    await record(pool, usage(tenant, 100, 40))
    sender = StripeMeterSender(billing_config)
    exporter = MeterExporter(pool, billing_config, sender)
    with caplog.at_level(logging.ERROR, logger="crosslogic.alerts"):
        report = await exporter.run_cycle()
    assert report.dead == 2 and stripe_server.events == {}
    assert any(getattr(r, "alert", None) == "billing_dead_letter" for r in caplog.records)
    letters = (await admin.get("/admin/v1/billing/dead-letters")).json()["data"]
    assert len(letters) == 2 and "No such customer" in letters[0]["reason"]
    diffs = await reconcile(pool)
    assert {(d.meter, d.dead, d.unexplained) for d in diffs} == {
        ("input_tokens", 100, 0), ("output_tokens", 40, 0)}

    stripe_server.customers.add("cus_typo")  # the operator fixes the customer in Stripe
    for letter in letters:
        response = await admin.post(f"/admin/v1/billing/dead-letters/{letter['id']}/replay")
        assert response.status_code == 200 and response.json()["replayed_by"] == "ops@example.com"
    again = await admin.post(f"/admin/v1/billing/dead-letters/{letters[0]['id']}/replay")
    assert again.status_code == 409
    assert (await admin.post("/admin/v1/billing/dead-letters/999999/replay")).status_code == 404
    assert (await exporter.run_cycle()).delivered == 2
    assert stripe_server.hourly_totals() == await ledger_totals(admin_conn, (INPUT_METER, OUTPUT_METER))
    assert await reconcile(pool) == []
    audit = await admin_conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'billing.dead_letter.replay'")
    assert audit == 2
    await sender.aclose()


async def test_tenant_without_customer_is_held_visibly_not_skipped(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, stripe_server: StripeTestServer,
    billing_config: BillingConfig, make_tenant: TenantFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = await make_tenant(None)
    await record(pool, usage(tenant, 10, 10))
    sender = StripeMeterSender(billing_config)
    exporter = MeterExporter(pool, billing_config, sender)
    with caplog.at_level(logging.ERROR, logger="crosslogic.alerts"):
        report = await exporter.run_cycle()
    assert report.missing_customer == 2 and report.delivered == 0
    assert exporter.metrics.get("missing_customer_total") == 2
    assert any(getattr(r, "alert", None) == "billing_missing_customer" for r in caplog.records)
    await admin_conn.execute("UPDATE tenants SET stripe_customer_id = 'cus_late' WHERE id = $1", tenant)
    stripe_server.customers.add("cus_late")
    await admin_conn.execute("UPDATE billing_outbox SET next_attempt_at = now()")
    assert (await exporter.run_cycle()).delivered == 2
    assert stripe_server.hourly_totals() == await ledger_totals(admin_conn, (INPUT_METER, OUTPUT_METER))
    await sender.aclose()


async def test_usage_older_than_stripe_window_is_dead_lettered_not_sent(
    pool: asyncpg.Pool, stripe_server: StripeTestServer, billing_config: BillingConfig,
    make_tenant: TenantFactory,
) -> None:
    tenant = await make_tenant()
    await record(pool, usage(tenant, 5, 5, created_at=datetime.now(UTC) - timedelta(days=40)))
    sender = StripeMeterSender(billing_config)
    report = await MeterExporter(pool, billing_config, sender).run_cycle()
    assert report.dead == 2 and stripe_server.calls["total"] == 0
    await sender.aclose()


async def test_identifiers_are_deterministic_and_short(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection, stripe_server: StripeTestServer,
    billing_config: BillingConfig, make_tenant: TenantFactory,
) -> None:
    tenant = await make_tenant()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    sender = StripeMeterSender(billing_config)
    exporter = MeterExporter(pool, billing_config, sender)
    await record(pool, usage(tenant, 1, 1, created_at=hour))
    await exporter.run_cycle()
    # Late usage for the same hour: a second event (a delta), never a changed first one.
    await record(pool, usage(tenant, 2, 3, created_at=hour))
    await exporter.run_cycle()
    rows = await admin_conn.fetch("SELECT identifier, value FROM billing_outbox ORDER BY id")
    assert [r["value"] for r in rows] == [1, 1, 2, 3]
    assert all(len(r["identifier"]) <= 100 for r in rows)
    assert set(stripe_server.events) == {r["identifier"] for r in rows}
    key = (f"cus_{tenant.hex[:14]}", INPUT_METER, int(hour.timestamp()))
    assert stripe_server.hourly_totals()[key] == 3
    await sender.aclose()


async def test_old_unexported_usage_raises_the_lag_alert(
    pool: asyncpg.Pool, stripe_server: StripeTestServer, billing_config: BillingConfig,
    make_tenant: TenantFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = await make_tenant()
    stripe_server.faults.outage = True
    await record(pool, usage(tenant, 5, 5, created_at=datetime.now(UTC) - timedelta(hours=2)))
    sender = StripeMeterSender(billing_config)
    exporter = MeterExporter(pool, billing_config, sender)
    with caplog.at_level(logging.ERROR, logger="crosslogic.alerts"):
        report = await exporter.run_cycle()
    assert report.retried == 2 and report.oldest_unexported_s is not None
    assert 7100 < exporter.metrics.get("oldest_unexported_usage_seconds") < 7300
    assert any(getattr(r, "alert", None) == "billing_export_lagging" for r in caplog.records)
    stripe_server.faults.outage = False
    await pool.execute("UPDATE billing_outbox SET next_attempt_at = now()")
    assert (await exporter.run_cycle()).oldest_unexported_s == 0
    await sender.aclose()


async def test_close_writes_even_if_never_started(pool: asyncpg.Pool) -> None:
    recorder = UsageRecorder(pool)
    recorder.record(usage(uuid.uuid4()))
    await recorder.close()
    assert recorder.pending == 0


async def test_usage_before_export_from_is_never_exported(
    pool: asyncpg.Pool, stripe_server: StripeTestServer, billing_config: BillingConfig,
    make_tenant: TenantFactory,
) -> None:
    tenant = await make_tenant()
    cutover = datetime.now(UTC) - timedelta(minutes=30)
    await record(pool, usage(tenant, 100, 100, created_at=cutover - timedelta(days=3)),
                 usage(tenant, 7, 3, created_at=cutover + timedelta(minutes=1)))
    config = billing_config.model_copy(update={"export_from": cutover})
    sender = StripeMeterSender(config)
    report = await MeterExporter(pool, config, sender).run_cycle()
    assert report.ledger_rows == 1 and report.delivered == 2
    assert sorted(stripe_server.hourly_totals().values()) == [3, 7]
    await sender.aclose()
