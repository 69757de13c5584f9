"""Apply stored Stripe webhook events to tenants, with retry and a dead letter.

Each event is applied and marked processed in one transaction, so it takes effect exactly once.
Suspending a tenant updates `tenants.status`; migration 0001's trigger then NOTIFYs `crosslogic_auth`,
which makes every ingress replica drop the tenant's cached keys (requests get 403 tenant_suspended).
Billing only reactivates tenants that billing suspended: an operator's suspension stays. Stripe does
not deliver in order, so an event older than the last one applied to the tenant is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from billing.config import BillingConfig
from crosslogic.audit.log import AuditContext, write_audit
from crosslogic.backoff import Backoff
from crosslogic.metering.metrics import Metrics, alert
from crosslogic.storage.executor import Connection

log = logging.getLogger(__name__)

ACTOR = "stripe-webhook"
SUSPEND_EVENTS = frozenset({"customer.subscription.deleted", "invoice.payment_failed"})
ACTIVATE_EVENTS = frozenset({"invoice.paid", "customer.subscription.resumed"})
SUBSCRIPTION_CHANGES = frozenset({"customer.subscription.created", "customer.subscription.updated"})
SUSPENDING_SUBSCRIPTION_STATES = frozenset({"canceled", "unpaid", "incomplete_expired"})
METER_ERROR_EVENTS = frozenset(
    {"billing.meter.error_report_triggered", "v1.billing.meter.error_report_triggered"}
)
# A webhook that failed to apply is retried after steps of 2 s, 4 s, ... capped at 5 min (`attempts`
# counts the failed one), waiting at least half of each: it is our own database we retry, not a
# crowded remote.
WEBHOOK_RETRY = Backoff(2.0, 300.0, jitter=0.5)

_CLAIM = """
WITH due AS (
    SELECT event_id FROM stripe_webhook_events
    WHERE status = 'pending' AND next_attempt_at <= now() AND lease_until < now()
    ORDER BY created, event_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE stripe_webhook_events e
SET lease_until = now() + make_interval(secs => $2), attempts = e.attempts + 1
FROM due WHERE e.event_id = due.event_id
RETURNING e.event_id, e.type, e.created, e.payload::text AS payload, e.attempts
"""


def _customer_of(event: dict[str, Any]) -> str | None:
    obj = event.get("data", {}).get("object", {})
    customer = obj.get("customer") if isinstance(obj, dict) else None
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) else None


def desired_status(event: dict[str, Any]) -> str | None:
    """'suspended', 'active' or None (the event does not change tenant status)."""
    kind = event["type"]
    if kind in SUSPEND_EVENTS:
        return "suspended"
    if kind in ACTIVATE_EVENTS:
        return "active"
    if kind in SUBSCRIPTION_CHANGES:
        state = event.get("data", {}).get("object", {}).get("status")
        if state == "active":
            return "active"
        if state in SUSPENDING_SUBSCRIPTION_STATES:
            return "suspended"
    return None


class WebhookProcessor:
    def __init__(
        self, pool: asyncpg.Pool, config: BillingConfig, *, metrics: Metrics | None = None
    ) -> None:
        self._pool = pool
        self._config = config
        self._wake = asyncio.Event()
        self.metrics = metrics or Metrics("crosslogic_billing_webhooks")

    def kick(self) -> None:
        self._wake.set()

    async def run_forever(self, on_cycle: Callable[[], None] | None = None) -> None:
        """`on_cycle`: called after each finished poll (loop liveness for /ready)."""
        while True:
            await self.run_once()
            if on_cycle is not None:
                on_cycle()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._config.webhook_poll_s)
            except TimeoutError:
                pass

    async def run_once(self, limit: int = 100) -> int:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_CLAIM, limit, 60.0)
        for row in rows:
            await self._process(row)
        return len(rows)

    async def _process(self, row: asyncpg.Record) -> None:
        event = json.loads(row["payload"])
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._apply(conn, event, row["created"])
                await conn.execute(
                    "UPDATE stripe_webhook_events SET status = 'processed', processed_at = now(), "
                    "last_error = NULL WHERE event_id = $1",
                    row["event_id"],
                )
            self.metrics.inc("processed_total")
        except Exception as exc:  # any failure: retry later, dead-letter after max attempts
            await self._failed(row, f"{type(exc).__name__}: {exc}")

    async def _failed(self, row: asyncpg.Record, error: str) -> None:
        self.metrics.inc("failures_total")
        log.warning("webhook %s (%s) failed: %s", row["event_id"], row["type"], error)
        async with self._pool.acquire() as conn, conn.transaction():
            if row["attempts"] >= self._config.webhook_max_attempts:
                await conn.execute(
                    "UPDATE stripe_webhook_events SET status = 'dead', last_error = $2 "
                    "WHERE event_id = $1",
                    row["event_id"], error,
                )
                await conn.execute(
                    "INSERT INTO billing_dead_letters (kind, ref, reason, detail) "
                    "VALUES ('webhook', $1, $2, $3::jsonb)",
                    row["event_id"], error, json.dumps({"type": row["type"]}),
                )
                self.metrics.inc("dead_lettered_total")
                alert("billing_webhook_dead_letter", "webhook %s (%s) dead-lettered: %s",
                      row["event_id"], row["type"], error)
                return
            delay = WEBHOOK_RETRY.delay(row["attempts"])
            await conn.execute(
                "UPDATE stripe_webhook_events SET last_error = $2, lease_until = '-infinity', "
                "next_attempt_at = now() + make_interval(secs => $3) WHERE event_id = $1",
                row["event_id"], error, delay,
            )

    async def _apply(self, conn: Connection, event: dict[str, Any], created: datetime) -> None:
        if event["type"] in METER_ERROR_EVENTS:
            self.metrics.inc("meter_error_reports_total")
            summary = event.get("data", {}).get("object", {}).get("summary")
            alert("billing_meter_error_report", "Stripe reported meter errors (event %s): %s",
                  event["id"], summary)
            return
        target = desired_status(event)
        if target is None:
            return
        customer = _customer_of(event)
        tenant = None
        if customer is not None:
            # At most one row: a customer bills one tenant (unique since migration 0013).
            tenant = await conn.fetchrow(
                "SELECT id, status FROM tenants WHERE stripe_customer_id = $1 FOR UPDATE", customer
            )
        if tenant is None:
            log.warning("webhook %s (%s) for unknown customer %s: ignored",
                        event["id"], event["type"], customer)
            return
        await self._set_status(conn, tenant, target, event, created)

    async def _set_status(
        self, conn: Connection, tenant: asyncpg.Record, target: str, event: dict[str, Any],
        created: datetime,
    ) -> None:
        state = await conn.fetchrow(
            "INSERT INTO billing_tenant_state (tenant_id) VALUES ($1) "
            "ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id "
            "RETURNING suspended_by_billing, last_event_created",
            tenant["id"],
        )
        assert state is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
        if state["last_event_created"] is not None and created < state["last_event_created"]:
            log.info("webhook %s older than the last applied event for tenant %s: ignored",
                     event["id"], tenant["id"])
            return
        by_billing = state["suspended_by_billing"]
        change = None
        if target == "suspended" and tenant["status"] == "active":
            change, by_billing = "tenant.suspend", True
        elif target == "active" and tenant["status"] == "suspended" and by_billing:
            change, by_billing = "tenant.activate", False
        await conn.execute(
            "UPDATE billing_tenant_state SET suspended_by_billing = $2, last_event_id = $3, "
            "last_event_created = $4, updated_at = now() WHERE tenant_id = $1",
            tenant["id"], by_billing, event["id"], created,
        )
        if change is None:
            return
        # The tenants trigger NOTIFYs crosslogic_auth at commit: key caches drop the tenant.
        await conn.execute(
            "UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1", tenant["id"], target
        )
        await write_audit(
            conn,
            AuditContext(actor=ACTOR, request_id=event["id"]),
            action=change,
            target_type="tenant",
            target_id=str(tenant["id"]),
            before={"status": tenant["status"]},
            after={"status": target, "stripe_event": event["type"]},
        )
        self.metrics.inc(f"{change.replace('.', '_')}_total")
        log.warning("%s %s after Stripe event %s (%s)", change, tenant["id"], event["id"],
                    event["type"])
