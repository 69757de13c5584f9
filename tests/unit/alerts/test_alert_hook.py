"""`alert()` raised by real components reaches the sinks once a dispatcher is installed; the log line
stays; `loop_crashing` resolves once the loop has been healthy again."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest

from crosslogic.alerts.config import PAGERDUTY_ROUTING_KEY_ENV, AlertsConfig
from crosslogic.alerts.lifecycle import start_alerts, stop_alerts
from crosslogic.alerts.registry import current_dispatcher
from crosslogic.metering import UsageRecorder
from crosslogic.metering.metrics import ALERT_LOGGER, alert, resolve_alert
from crosslogic.metering.records import UsageRecord, UsageStatus
from crosslogic.supervisor import supervise
from tests.alert_receivers import ROUTING_KEY, WebhookReceiver, eventually
from tests.pagerduty_server import PagerDutyServer


def _config(webhook_url: str, events_url: str) -> AlertsConfig:
    return AlertsConfig.model_validate({"webhook": {"url": webhook_url}, "pagerduty": {"events_url": events_url},
                                        "backoff_base_s": 0.01})


async def test_alert_logs_and_reaches_both_sinks(
    webhook: tuple[WebhookReceiver, str], pagerduty: tuple[PagerDutyServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, url = webhook
    server, base = pagerduty
    dispatcher = start_alerts(_config(url, base), component="billing", region="eu",
                              env={PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})
    assert dispatcher is not None and current_dispatcher() is dispatcher
    with caplog.at_level(logging.INFO, logger=ALERT_LOGGER):
        alert("billing_dead_letter", "row %s dead-lettered: %s", 42, ValueError("bad"), key="row-42",
              details={"error": ValueError("bad")})
        resolve_alert("billing_dead_letter", "row-42")
    await eventually(lambda: len(receiver.received) == 2 and len(server.events) == 2)
    await stop_alerts(dispatcher)
    assert current_dispatcher() is None
    assert [r.getMessage() for r in caplog.records] == [
        "ALERT billing_dead_letter: row 42 dead-lettered: bad", "RESOLVED billing_dead_letter[row-42]: cleared"]
    trigger = receiver.bodies[0]
    assert trigger["summary"] == "billing_dead_letter: row 42 dead-lettered: bad"
    assert trigger["component"] == "billing" and trigger["source"].startswith("eu/")
    assert trigger["details"] == {"error": "bad"}
    assert [e["event_action"] for e in server.events] == ["trigger", "resolve"]
    assert server.incidents == {"crosslogic/billing_dead_letter/row-42": "resolved"}


async def test_without_sinks_alerts_are_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert start_alerts(AlertsConfig(), component="ingress") is None
    with caplog.at_level(logging.ERROR, logger=ALERT_LOGGER):
        alert("usage_ledger_overflow", "full")
    assert caplog.records[0].getMessage() == "ALERT usage_ledger_overflow: full"


async def test_usage_recorder_overflow_alert_reaches_the_webhook(
    webhook: tuple[WebhookReceiver, str], pagerduty: tuple[PagerDutyServer, str], db_pool: asyncpg.Pool
) -> None:
    receiver, url = webhook
    _, base = pagerduty
    dispatcher = start_alerts(_config(url, base), component="ingress",
                              env={PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})
    recorder = UsageRecorder(db_pool, max_buffer=1)  # not started: the second row finds the buffer full
    for _ in range(2):
        recorder.record(UsageRecord(request_id=f"req_{uuid.uuid4().hex}", tenant_id=uuid.uuid4(), model="m",
                                    prompt_tokens=1, completion_tokens=1, status=UsageStatus.FINISHED))
    await eventually(lambda: len(receiver.received) == 1)
    await stop_alerts(dispatcher)
    assert receiver.bodies[0]["name"] == "usage_ledger_overflow"
    assert receiver.bodies[0]["component"] == "ingress"


async def test_loop_crashing_triggers_then_resolves_once_healthy(
    webhook: tuple[WebhookReceiver, str], pagerduty: tuple[PagerDutyServer, str]
) -> None:
    receiver, url = webhook
    server, base = pagerduty
    dispatcher = start_alerts(_config(url, base), component="ingress",
                              env={PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"crash {runs}")
        await asyncio.sleep(3600)  # healthy from the fourth run on

    task = asyncio.create_task(supervise("view_refresh", body, backoff_base_s=0.01, backoff_max_s=0.02,
                                         healthy_after_s=0.5, alert_after_failures=3))
    await eventually(lambda: len(server.events) == 1)
    assert server.events[0]["event_action"] == "trigger"
    assert server.events[0]["payload"]["custom_details"]["key"] == "view_refresh"
    await asyncio.sleep(0.2)
    assert len(server.events) == 1  # not healthy for long enough yet
    await eventually(lambda: len(server.events) == 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await eventually(lambda: len(receiver.received) == 2)
    await stop_alerts(dispatcher)
    assert server.incidents == {"crosslogic/loop_crashing/view_refresh": "resolved"}
    assert [(b["name"], b["key"], b["state"]) for b in receiver.bodies] == [
        ("loop_crashing", "view_refresh", "trigger"), ("loop_crashing", "view_refresh", "resolve")]


async def test_loop_that_keeps_crashing_is_not_resolved(pagerduty: tuple[PagerDutyServer, str]) -> None:
    server, base = pagerduty
    dispatcher = start_alerts(AlertsConfig.model_validate({"pagerduty": {"events_url": base}}),
                              component="ingress", env={PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})

    async def body() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("still broken")

    task = asyncio.create_task(supervise("key_listener", body, backoff_base_s=0.01, backoff_max_s=0.02,
                                         healthy_after_s=0.3, alert_after_failures=2))
    await eventually(lambda: len(server.events) == 1)
    await asyncio.sleep(0.8)  # many short runs, none lasting healthy_after_s
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await stop_alerts(dispatcher)
    assert [e["event_action"] for e in server.events] == ["trigger"]
