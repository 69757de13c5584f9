"""A real alert from the live stack reaches the session's webhook receiver and strict PagerDuty server:
trigger, then resolve, under one dedup key.

The trigger is a real dependency outage, scoped to this session: the stack's own PostgreSQL database
(tests/conftest.py creates one per session) stops accepting connections (`ALLOW_CONNECTIONS false`,
its sessions terminated) and is given back. Each ingress replica's readiness watcher sees /ready's
postgres entry degrade (the replica stays ready on its cached keys) and raises `dependency_down`
for postgres; the recovery resolves it.

Every ingress replica watches and alerts on its own (no replica is special, none may be the single
point of paging), so PagerDuty receives one trigger and one resolve per replica, all with the dedup
key `crosslogic/dependency_down/postgres`. PagerDuty merges them: the first trigger opens the alert,
a trigger for a key whose alert is open is appended to it, the first resolve closes it and a resolve
with nothing open is dropped. One outage = one page, however many replicas saw it. The strict server
(tests/pagerduty_server.py) applies those rules; the webhook receiver gets every copy as sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from crosslogic.storage.pool import dsn_with_database
from tests.serve.alert_thread import AlertReceiversThread, AlertsSeen
from tests.serve.conftest import ServeStack

pytestmark = pytest.mark.postgres

NAME, KEY = "dependency_down", "postgres"
DEDUP_KEY = f"crosslogic/{NAME}/{KEY}"


async def _wait(condition: Callable[[], bool], timeout_s: float, what: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what()
        await asyncio.sleep(0.25)


def _ours(seen: AlertsSeen, since: AlertsSeen) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Webhook bodies and PagerDuty events for our dedup key that arrived after `since`."""
    bodies = [b for b in seen.webhook[len(since.webhook):] if b["dedup_key"] == DEDUP_KEY]
    events = [e for e in seen.pagerduty[len(since.pagerduty):] if e["dedup_key"] == DEDUP_KEY]
    return bodies, events


def _count(receivers: AlertReceiversThread, since: AlertsSeen, state: str) -> tuple[int, int]:
    """Our alerts in `state` received since `since`: (at the webhook, at PagerDuty)."""
    bodies, events = _ours(receivers.seen(), since)
    return (sum(1 for b in bodies if b["state"] == state),
            sum(1 for e in events if e["event_action"] == state))


@asynccontextmanager
async def database_refusing_connections(database_url: str) -> AsyncIterator[None]:
    """The session database accepts no connection (its sessions ended) until the block ends: a real
    outage of the stack's database only (others on the server are untouched)."""
    name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    admin = await asyncpg.connect(dsn_with_database(database_url, "postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


async def test_a_database_outage_pages_once_and_resolves(serve_stack: ServeStack, database_url: str) -> None:
    receivers = serve_stack.alerts
    assert isinstance(receivers, AlertReceiversThread)
    replicas = serve_stack.config["applications"][0]["args"]["ingress"]["num_replicas"]
    # A quiet start: the database reachable from the ingress, no alert of ours open at PagerDuty.
    await _wait(lambda: serve_stack.ready()["dependencies"]["postgres"]["data"].get("reachable") is True, 60,
                lambda: serve_stack.ready()["dependencies"]["postgres"])
    await _wait(lambda: receivers.pagerduty.incidents.get(DEDUP_KEY) in (None, "resolved"), 60,
                lambda: receivers.seen().outcomes)
    before = receivers.seen()

    async with database_refusing_connections(database_url):
        # Held until every replica paged both sinks: each sends its own trigger (its own alert id).
        await _wait(lambda: min(_count(receivers, before, "trigger")) >= replicas, 90,
                    lambda: (serve_stack.ready()["dependencies"]["postgres"], _ours(receivers.seen(), before)))
        during = serve_stack.ready()
    restored_at = time.monotonic()
    # Degraded, not down: the postgres entry stays ok (cached keys are served). (The billing entry may
    # go down meanwhile: its loops need the database; its own alerts are not this test's.)
    postgres = during["dependencies"]["postgres"]
    assert postgres["ok"] and postgres["data"]["degraded"] and not postgres["data"]["reachable"], postgres
    print(f"during the outage: ready={during['ready']}; "
          f"billing: {during['dependencies'].get('billing', {}).get('detail')}")

    # Every replica resolves once it reaches the database again.
    await _wait(lambda: min(_count(receivers, before, "resolve")) >= replicas, 90,
                lambda: (serve_stack.ready()["dependencies"]["postgres"], _ours(receivers.seen(), before)))
    print(f"resolved {time.monotonic() - restored_at:.1f}s after the database came back")

    seen = receivers.seen()
    bodies, events = _ours(seen, before)
    # The webhook: one trigger and one resolve per replica, each replica's copy its own alert.
    assert sorted(b["state"] for b in bodies) == ["resolve"] * replicas + ["trigger"] * replicas, bodies
    triggers = [b for b in bodies if b["state"] == "trigger"]
    assert len({b["id"] for b in bodies}) == 2 * replicas
    assert all(b["name"] == NAME and b["key"] == KEY and b["component"] == "ingress" for b in bodies)
    assert all(b["severity"] == "error" and "postgres degraded: unreachable" in b["summary"] for b in triggers)
    assert all(b["details"]["dependency"] == "postgres" and b["details"]["degraded"] for b in triggers)
    # PagerDuty: the same copies, one dedup key; merged into one alert, opened once and resolved.
    assert sorted(e["event_action"] for e in events) == ["resolve"] * replicas + ["trigger"] * replicas
    assert all(e["routing_key"] == events[0]["routing_key"] for e in events)
    outcomes = [outcome for key, outcome in seen.outcomes[len(before.outcomes):] if key == DEDUP_KEY]
    assert outcomes == ["opened"] + ["merged"] * (replicas - 1) + ["resolved"] + ["ignored"] * (replicas - 1)
    assert receivers.pagerduty.incidents[DEDUP_KEY] == "resolved"

    # The stack is whole again for the tests after this one.
    await _wait(lambda: serve_stack.ready()["ready"], 120, serve_stack.ready)
