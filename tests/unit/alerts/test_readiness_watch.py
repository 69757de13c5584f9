"""The readiness watcher: model_unavailable per model, dependency_down per dependency and
readiness_lost, triggered and resolved as the readiness it is given changes (real `Readiness` objects,
as the gateway returns them; PostgreSQL's entry from the real probe against a real server)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from crosslogic.alerts.config import PAGERDUTY_ROUTING_KEY_ENV, AlertsConfig, ReadinessWatchConfig
from crosslogic.alerts.dispatcher import AlertDispatcher
from crosslogic.alerts.lifecycle import start_alerts, stop_alerts
from crosslogic.alerts.readiness_watch import ReadinessWatch
from crosslogic.api.gateway import DependencyStatus, Readiness
from crosslogic.api.readiness_probes import DependencyProbes, billing_readiness, service_readiness
from crosslogic.storage.db_health import DatabaseHealth
from crosslogic.supervisor import supervise
from tests.alert_receivers import ROUTING_KEY, WebhookReceiver, eventually
from tests.pagerduty_server import PagerDutyServer


class _Service:
    """What the gateway would report: healthy replicas per model, the router reachable or not."""

    def __init__(self) -> None:
        self.replicas = {"smol": 1, "embed": 1}
        self.router_ok = True
        self.fail = False
        self.billing: dict[str, Any] | None = None  # the billing actor's status(), when billing is on

    async def readiness(self) -> Readiness:
        if self.fail:
            raise ConnectionError("router actor gone")
        deps = {"router": DependencyStatus(ok=self.router_ok, detail="" if self.router_ok else "unreachable")}
        for model, n in self.replicas.items():
            deps[f"engine:{model}"] = DependencyStatus(ok=n > 0, detail=f"{n} healthy replicas of 1")
        if self.billing is not None:
            deps["billing"] = billing_readiness(self.billing)
        return Readiness(ready=all(d.ok for d in deps.values()), dependencies=deps)


def _alerts_to(pagerduty_base: str, webhook_url: str | None = None) -> AlertDispatcher | None:
    sinks: dict[str, Any] = {"pagerduty": {"events_url": pagerduty_base}}
    if webhook_url is not None:
        sinks["webhook"] = {"url": webhook_url}
    return start_alerts(AlertsConfig.model_validate(sinks), component="ingress",
                        env={PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})


def _immediate(interval_s: float = 0.05) -> ReadinessWatchConfig:
    return ReadinessWatchConfig(interval_s=interval_s, alert_after_s=0, startup_grace_s=0)


async def test_model_without_healthy_replica_triggers_then_resolves(
    webhook: tuple[WebhookReceiver, str], pagerduty: tuple[PagerDutyServer, str]
) -> None:
    receiver, url = webhook
    server, base = pagerduty
    dispatcher = _alerts_to(base, webhook_url=url)
    service = _Service()
    watch = ReadinessWatch(service.readiness, _immediate())
    task = asyncio.create_task(supervise("readiness_watch", watch.run))
    await asyncio.sleep(0.2)
    assert receiver.received == []  # all healthy: nothing sent
    service.replicas["smol"] = 0
    await eventually(lambda: len(server.events) == 2)
    triggered = {e["dedup_key"]: e for e in server.events}
    model = triggered["crosslogic/model_unavailable/smol"]
    assert model["event_action"] == "trigger" and model["payload"]["severity"] == "critical"
    assert "smol" in model["payload"]["summary"] and model["payload"]["custom_details"]["model"] == "smol"
    assert "engine:smol" in triggered["crosslogic/readiness_lost"]["payload"]["summary"]
    await asyncio.sleep(0.2)
    assert len(server.events) == 2  # still down: evaluated again, nothing new sent
    service.replicas["smol"] = 1
    await eventually(lambda: len(server.events) == 4)
    assert server.incidents == {"crosslogic/model_unavailable/smol": "resolved",
                                "crosslogic/readiness_lost": "resolved"}
    await eventually(lambda: len(receiver.received) == 4)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await stop_alerts(dispatcher)
    assert sorted((b["name"], b["key"], b["state"]) for b in receiver.bodies) == [
        ("model_unavailable", "smol", "resolve"), ("model_unavailable", "smol", "trigger"),
        ("readiness_lost", "", "resolve"), ("readiness_lost", "", "trigger")]


async def test_readiness_lost_without_a_model_down_and_when_unevaluable(
    pagerduty: tuple[PagerDutyServer, str]
) -> None:
    server, base = pagerduty
    dispatcher = _alerts_to(base)
    service = _Service()
    watch = ReadinessWatch(service.readiness, _immediate())
    service.router_ok = False
    await watch.check_once()
    assert watch.alerted == {("readiness_lost", ""), ("dependency_down", "router")}
    service.router_ok = True
    await watch.check_once()
    # Readiness itself raises: not ready; the models' and dependencies' state is left as it was.
    service.fail = True
    await watch.check_once()
    assert watch.alerted == {("readiness_lost", "")}
    await eventually(lambda: len(server.events) == 5)
    await stop_alerts(dispatcher)
    assert sorted((e["dedup_key"], e["event_action"]) for e in server.events[:4]) == [
        ("crosslogic/dependency_down/router", "resolve"), ("crosslogic/dependency_down/router", "trigger"),
        ("crosslogic/readiness_lost", "resolve"), ("crosslogic/readiness_lost", "trigger")]
    assert (server.events[4]["dedup_key"], server.events[4]["event_action"]) == ("crosslogic/readiness_lost", "trigger")
    assert "readiness check failed: ConnectionError" in server.events[4]["payload"]["summary"]


async def test_a_condition_pages_only_after_holding_and_after_the_startup_grace() -> None:
    now = [0.0]
    service = _Service()
    service.replicas["smol"] = 0
    watch = ReadinessWatch(service.readiness, ReadinessWatchConfig(alert_after_s=30, startup_grace_s=100),
                           clock=lambda: now[0])
    await watch.check_once()
    now[0] = 60.0  # down for 60 s, but engines may still be loading
    await watch.check_once()
    assert watch.alerted == set()
    now[0] = 100.0
    await watch.check_once()
    assert watch.alerted == {("model_unavailable", "smol"), ("readiness_lost", "")}
    service.replicas["smol"] = 1
    await watch.check_once()
    now[0] = 110.0
    service.replicas["smol"] = 0  # a blip after the grace: must hold alert_after_s again
    await watch.check_once()
    now[0] = 125.0
    await watch.check_once()
    assert watch.alerted == set()
    now[0] = 141.0
    await watch.check_once()
    assert ("model_unavailable", "smol") in watch.alerted


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def unreachable_pool() -> AsyncIterator[asyncpg.Pool]:
    """A pool whose server is gone: a DSN to a loopback port nothing listens on."""
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{_closed_port()}/gone", min_size=0)
    try:
        yield pool
    finally:
        await pool.close()


async def test_postgres_outage_pages_although_the_ingress_stays_ready(
    db_pool: asyncpg.Pool, unreachable_pool: asyncpg.Pool,
    webhook: tuple[WebhookReceiver, str], pagerduty: tuple[PagerDutyServer, str],
) -> None:
    """What /ready reports (the gateway's readiness, then the real SELECT 1 probe) is what the watcher
    sees: PostgreSQL away keeps the ingress ready on its cached keys, and still pages; its return resolves."""
    receiver, url = webhook
    server, base = pagerduty
    dispatcher = _alerts_to(base, webhook_url=url)
    service = _Service()
    health = DatabaseHealth()  # shared, as the ingress shares it with the key authenticator
    up = DependencyProbes(db_pool, health, cached_keys=lambda: 3, timeout_s=2.0)
    down = DependencyProbes(unreachable_pool, health, cached_keys=lambda: 3, timeout_s=2.0)
    probes = [up]
    seen: list[Readiness] = []

    async def readiness() -> Readiness:
        seen.append(await service_readiness(service.readiness, probes[0]))
        return seen[-1]

    watch = ReadinessWatch(readiness, _immediate())
    await watch.check_once()
    assert watch.alerted == set() and seen[-1].dependencies["postgres"].data["reachable"]
    probes[0] = down  # the database goes away
    await watch.check_once()
    assert watch.alerted == {("dependency_down", "postgres")}
    assert seen[-1].ready and health.down  # still in rotation: cached keys answered
    await watch.check_once()  # still away: nothing new
    probes[0] = up  # it is back
    await watch.check_once()
    assert watch.alerted == set() and not health.down
    await eventually(lambda: len(server.events) == 2 and len(receiver.received) == 2)
    await stop_alerts(dispatcher)
    trigger, resolve = server.events
    assert trigger["dedup_key"] == resolve["dedup_key"] == "crosslogic/dependency_down/postgres"
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["payload"]["severity"] == "error"  # degraded, not down: the API still answers
    assert "postgres degraded: unreachable" in trigger["payload"]["summary"]
    assert "serving cached keys (3 cached" in trigger["payload"]["summary"]
    assert trigger["payload"]["custom_details"]["dependency"] == "postgres"
    assert [(b["name"], b["key"], b["state"]) for b in receiver.bodies] == [
        ("dependency_down", "postgres", "trigger"), ("dependency_down", "postgres", "resolve")]


async def test_billing_loops_stalled_page_as_down_but_keep_the_replica_ready(pagerduty: tuple[PagerDutyServer, str]) -> None:
    server, base = pagerduty
    dispatcher = _alerts_to(base)
    service = _Service()
    running = {"interval_s": 30.0, "last_iteration_age_s": 2.0, "iterations": 5, "running": True}
    service.billing = {"loops": {"billing_export": running}}
    watch = ReadinessWatch(lambda: service_readiness(service.readiness), _immediate())
    await watch.check_once()
    assert watch.alerted == set()
    service.billing = {"loops": {"billing_export": {**running, "last_iteration_age_s": 95.0, "running": False}}}
    await watch.check_once()
    # Paged, but the replica stays in rotation: serving does not need the export loops.
    assert watch.alerted == {("dependency_down", "billing")}
    assert (await service_readiness(service.readiness)).ready
    service.billing = {"loops": {"billing_export": running}}
    await watch.check_once()
    assert watch.alerted == set()
    await eventually(lambda: len(server.events) == 2)
    await stop_alerts(dispatcher)
    billing = [e for e in server.events if e["dedup_key"] == "crosslogic/dependency_down/billing"]
    assert [e["event_action"] for e in billing] == ["trigger", "resolve"]
    assert billing[0]["payload"]["severity"] == "critical"
    assert "billing down: billing_export stalled (last iteration 95.0s ago" in billing[0]["payload"]["summary"]
