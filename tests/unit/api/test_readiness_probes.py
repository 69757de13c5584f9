"""`/ready`'s own probes: a real SELECT 1 and a real Redis PING with timeouts; billing's loops must
have finished an iteration lately, not merely exist as tasks."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import pytest

from crosslogic.api.readiness_probes import DependencyProbes, billing_readiness
from crosslogic.loop_liveness import LoopLiveness
from crosslogic.storage.db_health import DatabaseHealth


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_postgres_probe_answers_and_marks_the_database_up(db_pool: asyncpg.Pool) -> None:
    health = DatabaseHealth()
    health.mark_down("earlier outage")
    probes = DependencyProbes(db_pool, health)
    status = (await probes.check())["postgres"]
    assert status.ok and status.data["reachable"] and status.detail.startswith("SELECT 1 in")
    assert not health.down


async def test_unreachable_postgres_is_degraded_but_serving_cached_keys() -> None:
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{_dead_port()}/x", min_size=0)
    health = DatabaseHealth()
    probes = DependencyProbes(pool, health, cached_keys=lambda: 7, timeout_s=2.0)
    try:
        status = (await probes.check())["postgres"]
    finally:
        await pool.close()
    assert status.ok  # the ingress stays in rotation: cached keys are answered
    assert "unreachable" in status.detail and "serving cached keys (7 cached" in status.detail
    assert status.data["degraded"] and health.down


@pytest.mark.redis
async def test_redis_ping_and_an_unreachable_redis() -> None:
    probes = DependencyProbes(None, DatabaseHealth(), redis_url="redis://127.0.0.1:6379/0")  # type: ignore[arg-type]
    try:
        up = await probes.redis()
    finally:
        await probes.close()
    assert up.ok and up.detail.startswith("PING in")
    for fail_open in (True, False):
        dead = DependencyProbes(None, DatabaseHealth(), redis_url=f"redis://127.0.0.1:{_dead_port()}/0",  # type: ignore[arg-type]
                                redis_fail_open=fail_open, timeout_s=0.5)
        started = time.monotonic()
        try:
            down = await dead.redis()
        finally:
            await dead.close()
        assert time.monotonic() - started < 2.0
        assert down.ok is fail_open and "unreachable" in down.detail and not down.data["reachable"]


def test_billing_is_ready_only_while_its_loops_finish_iterations() -> None:
    now = [100.0]
    liveness = LoopLiveness({"billing-export": 30.0, "billing-webhooks": 1.0}, clock=lambda: now[0])

    def status() -> dict[str, object]:
        return {"enabled": True, "loops": {n: s.model_dump() for n, s in liveness.view().items()}}

    assert billing_readiness(status()).ok  # start-up counts as an iteration
    now[0] += 2.0
    liveness.beat("billing-webhooks")
    assert billing_readiness(status()).ok
    now[0] += 5.0  # the webhook loop is stuck: its last iteration was 5 polls ago
    stalled = billing_readiness(status())
    assert not stalled.ok and "billing-webhooks stalled" in stalled.detail
    liveness.beat("billing-webhooks")
    now[0] += 91.0  # export's last iteration 98 s ago, interval 30 s
    liveness.beat("billing-webhooks")
    assert "billing-export stalled" in billing_readiness(status()).detail
    assert not billing_readiness({"enabled": True, "running": []}).ok


async def test_a_frozen_probe_is_waited_on_not_repeated() -> None:
    # A pool whose every connection attempt hangs: a listener that accepts and never answers.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{port}/x", min_size=0, max_size=2, timeout=30)
    probes = DependencyProbes(pool, DatabaseHealth(), timeout_s=0.3)
    try:
        first = await probes.postgres()
        pending = probes._db._pending
        second = await probes.postgres()
        assert probes._db._pending is pending  # one probe in flight, however often /ready is polled
        assert not first.data["reachable"] and "within 0.3s" in second.detail
    finally:
        pool.terminate()
        server.close()
