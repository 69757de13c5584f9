"""Stripe webhooks: real signature scheme, stored once, processed asynchronously, tenants suspended."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from billing_checks import WEBHOOK_SECRET, TenantFactory
from fastapi import FastAPI

from billing.config import BillingConfig
from billing.webhook_processor import WebhookProcessor
from billing.webhook_routes import build_stripe_webhook_router
from crosslogic.api.errors import install_error_handlers
from tests.stripe_server import sign_webhook


def stripe_event(kind: str, customer: str, *, created: int | None = None, **obj: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "type": kind,
        "created": created or int(time.time()), "api_version": "2025-04-30.basil",
        "livemode": False, "data": {"object": {"customer": customer, **obj}},
    }


@pytest.fixture
async def client(pool: asyncpg.Pool, billing_config: BillingConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_stripe_webhook_router(pool, billing_config))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress.test") as c:
        yield c


async def post(client: httpx.AsyncClient, event: dict[str, Any], *, secret: str = WEBHOOK_SECRET,
               ts: int | None = None) -> httpx.Response:
    body = json.dumps(event).encode()
    return await client.post("/webhooks/stripe", content=body, headers={
        "stripe-signature": sign_webhook(body, secret, ts), "content-type": "application/json"})


async def status_of(conn: asyncpg.Connection, tenant: uuid.UUID) -> str:
    return str(await conn.fetchval("SELECT status FROM tenants WHERE id = $1", tenant))


async def test_signed_event_is_stored_once_and_suspends_then_reactivates(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_conn: asyncpg.Connection,
    billing_config: BillingConfig, make_tenant: TenantFactory, billing_db_url: str,
) -> None:
    tenant = await make_tenant("cus_webhook1")
    processor = WebhookProcessor(pool, billing_config)
    listener = await asyncpg.connect(billing_db_url)
    notes: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("crosslogic_auth", lambda *a: notes.put_nowait(a[3]))

    failed = stripe_event("invoice.payment_failed", "cus_webhook1")
    first = await post(client, failed)
    again = await post(client, failed)
    assert first.status_code == 200 and first.json() == {"received": True, "duplicate": False}
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert await status_of(admin_conn, tenant) == "active"  # acknowledged before processing
    assert await processor.run_once() == 1
    assert await processor.run_once() == 0  # the duplicate was never queued
    assert await status_of(admin_conn, tenant) == "suspended"
    note = json.loads(await asyncio.wait_for(notes.get(), 5))
    assert note == {"table": "tenants", "id": str(tenant)}

    paid = stripe_event("invoice.paid", "cus_webhook1", created=failed["created"] + 5)
    assert (await post(client, paid)).status_code == 200
    await processor.run_once()
    assert await status_of(admin_conn, tenant) == "active"
    audit = await admin_conn.fetch(
        "SELECT action, actor FROM audit_log WHERE target_id = $1 ORDER BY id", str(tenant))
    assert [tuple(r) for r in audit] == [("tenant.suspend", "stripe-webhook"),
                                         ("tenant.activate", "stripe-webhook")]
    await listener.close()


async def test_out_of_order_and_operator_suspension_are_respected(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_conn: asyncpg.Connection,
    billing_config: BillingConfig, make_tenant: TenantFactory,
) -> None:
    tenant = await make_tenant("cus_order")
    processor = WebhookProcessor(pool, billing_config)
    now = int(time.time())
    await post(client, stripe_event("customer.subscription.deleted", "cus_order", created=now))
    await processor.run_once()
    # An older "paid" delivered late must not undo the newer cancellation.
    await post(client, stripe_event("invoice.paid", "cus_order", created=now - 60))
    await processor.run_once()
    assert await status_of(admin_conn, tenant) == "suspended"

    other = await make_tenant("cus_operator")
    await admin_conn.execute("UPDATE tenants SET status = 'suspended' WHERE id = $1", other)
    await post(client, stripe_event("customer.subscription.updated", "cus_operator", status="active"))
    await processor.run_once()
    assert await status_of(admin_conn, other) == "suspended"  # billing did not suspend it


async def test_a_webhook_suspends_exactly_the_tenant_of_its_customer(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_conn: asyncpg.Connection,
    billing_config: BillingConfig, make_tenant: TenantFactory,
) -> None:
    # Migration 0013: a customer bills one tenant, so the processor's lookup by customer is exact.
    billed = await make_tenant("cus_one_tenant")
    with pytest.raises(asyncpg.UniqueViolationError):
        await make_tenant("cus_one_tenant")
    bystanders = [await make_tenant(), await make_tenant(None), await make_tenant(None)]
    await post(client, stripe_event("invoice.payment_failed", "cus_one_tenant"))
    assert await WebhookProcessor(pool, billing_config).run_once() == 1
    suspended = await admin_conn.fetch("SELECT id FROM tenants WHERE status = 'suspended'")
    assert [r["id"] for r in suspended] == [billed]
    assert [await status_of(admin_conn, t) for t in bystanders] == ["active"] * 3


async def test_bad_signatures_are_refused_with_openai_errors(
    client: httpx.AsyncClient, admin_conn: asyncpg.Connection,
) -> None:
    event = stripe_event("invoice.paid", "cus_x")
    wrong = await post(client, event, secret="whsec_wrong")
    stale = await post(client, event, ts=int(time.time()) - 301)
    missing = await client.post("/webhooks/stripe", content=b"{}")
    for response in (wrong, stale, missing):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    assert await admin_conn.fetchval("SELECT count(*) FROM stripe_webhook_events") == 0


async def test_processing_failure_retries_then_dead_letters(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_conn: asyncpg.Connection,
    billing_config: BillingConfig, make_tenant: TenantFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    await make_tenant("cus_broken")
    config = billing_config.model_copy(update={"webhook_max_attempts": 2})
    processor = WebhookProcessor(pool, config)
    # A payload our code cannot handle (data is not an object) must not wedge the queue.
    event = stripe_event("invoice.payment_failed", "cus_broken")
    event["data"] = ["not", "an", "object"]
    await post(client, event)
    await processor.run_once()
    await admin_conn.execute("UPDATE stripe_webhook_events SET next_attempt_at = now()")
    await processor.run_once()
    row = await admin_conn.fetchrow("SELECT status, attempts FROM stripe_webhook_events")
    assert tuple(row) == ("dead", 2)
    letter = await admin_conn.fetchrow("SELECT kind, ref FROM billing_dead_letters")
    assert tuple(letter) == ("webhook", event["id"])
    assert any(getattr(r, "alert", None) == "billing_webhook_dead_letter" for r in caplog.records)


async def test_meter_error_report_raises_an_alert(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_config: BillingConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor = WebhookProcessor(pool, billing_config)
    event = stripe_event("billing.meter.error_report_triggered", "cus_any",
                         summary="2 events had an unknown customer")
    await post(client, event)
    await processor.run_once()
    assert processor.metrics.get("meter_error_reports_total") == 1
    assert any(getattr(r, "alert", None) == "billing_meter_error_report" for r in caplog.records)


async def test_route_absent_when_billing_disabled() -> None:
    app = FastAPI()
    install_error_handlers(app)  # billing disabled: the ingress does not include the webhook router
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/webhooks/stripe", content=b"{}")
    assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"
