"""The export loop: ledger -> outbox -> Stripe meter events, exactly once, restart-safe.

Nothing is kept in memory between cycles; a cycle can be cancelled at any await (actor killed) and
the next exporter, in this process or another, finishes the work once the leases expire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from billing import outbox
from billing.config import BillingConfig
from billing.outbox import OutboxRow
from billing.stripe_sender import MeterEvent, Outcome, SendResult, StripeMeterSender
from crosslogic.backoff import Backoff
from crosslogic.metering.metrics import AlertThrottle, Metrics, alert

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    ledger_rows: int = 0
    events_created: int = 0
    delivered: int = 0
    duplicates: int = 0
    retried: int = 0
    dead: int = 0
    missing_customer: int = 0
    oldest_unexported_s: float | None = None
    errors: list[str] = field(default_factory=list)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


class MeterExporter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: BillingConfig,
        sender: StripeMeterSender,
        *,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._config = config
        # Full jitter: the rows of one failed batch (a Stripe 429 or outage) come due spread out.
        self._retry_backoff = Backoff(config.retry_base_s, config.retry_max_s)
        self._sender = sender
        self.owner = owner or default_owner()
        self.metrics = metrics or Metrics("crosslogic_billing")
        self._alerts = AlertThrottle()

    async def run_forever(self, on_cycle: Callable[[], None] | None = None) -> None:
        """`on_cycle`: called after each finished cycle (loop liveness for /ready)."""
        while True:
            await self.run_cycle()
            if on_cycle is not None:
                on_cycle()
            await asyncio.sleep(self._config.interval_s)

    async def run_cycle(self) -> CycleReport:
        report = CycleReport()
        await self._aggregate(report)
        while True:
            rows = await outbox.claim(
                self._pool, self.owner, self._config.claim_batch, self._config.lease_s
            )
            if not rows:
                break
            await self._send_batch(rows, report)
        await self._check_age(report)
        return report

    async def _aggregate(self, report: CycleReport) -> None:
        while True:
            result = await outbox.aggregate_ledger(
                self._pool, self._config.aggregate_limit, self._config.export_from
            )
            report.ledger_rows += result.ledger_rows
            report.events_created += result.events
            self.metrics.inc("outbox_events_created_total", result.events)
            if result.ledger_rows < self._config.aggregate_limit:
                return

    async def _send_batch(self, rows: list[OutboxRow], report: CycleReport) -> None:
        limit = asyncio.Semaphore(self._config.send_concurrency)

        async def one(row: OutboxRow) -> SendResult:
            async with limit:
                return await self._send_row(row)

        results = await asyncio.gather(*(one(row) for row in rows))
        delivered: list[int] = []
        retries: list[tuple[int, float, str]] = []
        for row, result in zip(rows, results, strict=True):
            if result.delivered:
                delivered.append(row.id)
                if result.outcome is Outcome.DUPLICATE:
                    report.duplicates += 1
                    self.metrics.inc("meter_events_duplicate_total")
            elif result.outcome is Outcome.POISON:
                if await outbox.dead_letter(self._pool, self.owner, row.id, result.detail):
                    report.dead += 1
                    self.metrics.inc("meter_events_dead_lettered_total")
                    alert(
                        "billing_dead_letter",
                        "meter event %s (tenant %s, %s, %s) dead-lettered: %s",
                        row.identifier, row.tenant_id, row.meter, row.hour, result.detail,
                    )
            else:
                retries.append((row.id, self._retry_delay(row, result), result.detail[:500]))
        report.delivered += len(delivered)
        report.retried += len(retries)
        self.metrics.inc("meter_events_delivered_total", len(delivered))
        self.metrics.inc("meter_events_retried_total", len(retries))
        await outbox.mark_delivered(self._pool, self.owner, delivered)
        await outbox.reschedule(self._pool, self.owner, retries)
        report.missing_customer += sum(1 for r in rows if r.customer_id is None)

    async def _send_row(self, row: OutboxRow) -> SendResult:
        if row.customer_id is None:
            self.metrics.inc("missing_customer_total")
            self._alerts.fire(
                "billing_missing_customer",
                str(row.tenant_id),
                "tenant %s has usage to bill but no stripe_customer_id; event %s held",
                row.tenant_id, row.identifier,
            )
            return SendResult(Outcome.RETRY, "tenant has no stripe_customer_id")
        oldest_allowed = datetime.now(UTC) - timedelta(days=self._config.max_event_age_days)
        if row.hour < oldest_allowed:
            return SendResult(
                Outcome.POISON,
                f"hour {row.hour.isoformat()} is older than Stripe accepts "
                f"({self._config.max_event_age_days} days); bill it by hand",
            )
        event = MeterEvent(
            event_name=self._config.meter_event(row.meter),
            customer_id=row.customer_id,
            value=row.value,
            identifier=row.identifier,
            timestamp=int(row.hour.timestamp()),
        )
        result = await self._sender.send(event)
        if result.outcome is Outcome.AUTH:
            self._alerts.fire("billing_stripe_auth", "", "Stripe refused our API key: %s", result.detail)
        return result

    def _retry_delay(self, row: OutboxRow, result: SendResult) -> float:
        if row.customer_id is None:
            return self._config.missing_customer_retry_s
        return self._retry_backoff.delay(row.attempts, retry_after_s=result.retry_after_s)

    async def _check_age(self, report: CycleReport) -> None:
        oldest = await outbox.oldest_unexported(self._pool, self._config.export_from)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp())
        report.oldest_unexported_s = age
        self.metrics.set("oldest_unexported_usage_seconds", age)
        if age > self._config.alert_unexported_age_s:
            self._alerts.fire(
                "billing_export_lagging",
                "",
                "oldest unexported usage is %.0fs old (threshold %.0fs)",
                age, self._config.alert_unexported_age_s,
            )
