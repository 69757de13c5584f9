"""Every background loop runs under the supervisor: a crash is logged, counted per loop and restarted.

The core loops are crashed through their real dependencies (PostgreSQL's port going dead under the
usage flush, the listener's backend terminated) and must count a restart and work again afterwards.
The Ray-hosted loops (engine reports, view syncs, card refresh, billing keepalive) use the same
`supervise` wrapper, tested here directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from crosslogic.auth.invalidation_listener import AUTH_CHANNEL, InvalidationListener
from crosslogic.metering import UsageRecorder, UsageStatus
from crosslogic.metering.records import UsageRecord
from crosslogic.supervisor import RestartCounts, supervise


class SwitchableProxy:
    """A TCP proxy to PostgreSQL whose port can go dead (connections cut, new ones refused) and come back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        dst.close()


@pytest.fixture
async def proxied(database_url: str, db_pool: asyncpg.Pool) -> AsyncIterator[tuple[asyncpg.Pool, SwitchableProxy]]:
    parts = urlsplit(database_url)
    proxy = SwitchableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    await proxy.up()
    credentials = parts.netloc.rpartition("@")[0]
    user = f"{credentials}@" if credentials else ""
    pool = await asyncpg.create_pool(
        urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}")), min_size=1, max_size=2)
    yield pool, proxy
    pool.terminate()
    with contextlib.suppress(Exception):
        await proxy.down()


async def wait_until(condition: Callable[[], bool], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _usage(tenant: uuid.UUID) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{uuid.uuid4().hex}", tenant_id=tenant, key_id=uuid.uuid4(), model="m",
        region="local", prompt_tokens=3, completion_tokens=2, status=UsageStatus.FINISHED,
    )


async def _rows(db: asyncpg.Pool, tenant: uuid.UUID) -> int:
    return int(await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant))


async def test_usage_flush_restarts_while_postgres_port_is_dead_then_writes(
    proxied: tuple[asyncpg.Pool, SwitchableProxy], db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture,
) -> None:
    pool, proxy = proxied
    restarts = RestartCounts()
    recorder = UsageRecorder(pool, flush_interval_s=0.01, retry_base_s=0.02, retry_max_s=0.1, restarts=restarts)
    recorder.start()
    tenant = uuid.uuid4()
    try:
        recorder.record(_usage(tenant))
        await wait_until(lambda: recorder.metrics.get("written_total") == 1, 5)
        await proxy.down()
        with caplog.at_level(logging.ERROR, logger="crosslogic.supervisor"):
            for _ in range(3):
                recorder.record(_usage(tenant))
            await wait_until(lambda: restarts.get("usage_flush") >= 2, 5)
        assert recorder.pending == 3  # nothing lost while the flush keeps crashing
        crashed = [r for r in caplog.records if r.getMessage() == "supervised loop usage_flush crashed"]
        assert crashed and all(r.exc_info for r in crashed)
        await proxy.up()
        await wait_until(lambda: recorder.pending == 0, 10)
        assert await _rows(db_pool, tenant) == 4
        # Works again, and stays up: a new row is written without another restart.
        count = restarts.get("usage_flush")
        recorder.record(_usage(tenant))
        await wait_until(lambda: recorder.pending == 0, 5)
        assert restarts.get("usage_flush") == count
        assert await _rows(db_pool, tenant) == 5
    finally:
        await recorder.close(timeout_s=5)


async def test_usage_flush_supervision_ends_with_the_last_flush_on_close(db_pool: asyncpg.Pool) -> None:
    restarts = RestartCounts()
    recorder = UsageRecorder(db_pool, flush_interval_s=60, restarts=restarts)
    recorder.start()
    tenant = uuid.uuid4()
    recorder.record(_usage(tenant))
    started = time.monotonic()
    await recorder.close(timeout_s=5)
    assert time.monotonic() - started < 2  # returned promptly: not restarted after its final flush
    assert await _rows(db_pool, tenant) == 1
    assert restarts.counts == {}


async def test_auth_listener_restarts_after_its_backend_is_killed_and_hears_again(db_pool: asyncpg.Pool) -> None:
    restarts = RestartCounts()
    messages: list[object] = []
    listener = InvalidationListener(
        db_pool, on_message=messages.append, on_connected=lambda: None, on_lost=lambda: None,
        health_interval_s=0.1, restarts=restarts,
    )
    assert await listener.start()
    try:
        killed = listener.backend_pid
        await db_pool.execute("SELECT pg_terminate_backend($1)", killed)
        await wait_until(lambda: restarts.get("auth_listener") == 1 and listener.connected, 5)
        assert listener.backend_pid != killed
        await db_pool.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, json.dumps({"n": 1}))
        await wait_until(lambda: {"n": 1} in messages, 2)
    finally:
        await listener.close()


async def test_auth_listener_crashing_callback_is_restarted(db_pool: asyncpg.Pool) -> None:
    restarts = RestartCounts()
    calls = 0

    def on_connected() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("cache refused to reset")

    listener = InvalidationListener(
        db_pool, on_message=lambda _m: None, on_connected=on_connected, on_lost=lambda: None, restarts=restarts,
    )
    try:
        assert await listener.start()
        await wait_until(lambda: calls == 2 and listener.connected, 5)
        assert restarts.get("auth_listener") == 1
    finally:
        await listener.close()


async def test_supervisor_counts_restarts_per_loop_and_keeps_the_loop_working() -> None:
    forwarded: list[str] = []

    class Forward:
        def restarted(self, loop: str) -> None:
            forwarded.append(loop)

    restarts = RestartCounts(also=Forward())
    ticks = 0

    async def report_loop() -> None:  # what the Ray loops look like: a dependency that fails, escaping
        nonlocal ticks
        while True:
            ticks += 1
            if ticks in (2, 4):
                raise ConnectionError("router actor gone")
            await asyncio.sleep(0.001)

    task = asyncio.create_task(supervise("engine_queue_report", report_loop, restarts=restarts,
                                         backoff_base_s=0.01, backoff_max_s=0.02))
    try:
        await wait_until(lambda: ticks > 20, 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert restarts.counts == {"engine_queue_report": 2}
    assert forwarded == ["engine_queue_report"] * 2


async def test_a_returning_loop_is_restarted_unless_its_return_means_done() -> None:
    restarts = RestartCounts()
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1

    await asyncio.wait_for(
        supervise("idle_ending", body, restarts=restarts, finished_on_return=True), 1)
    assert runs == 1 and restarts.counts == {}
    task = asyncio.create_task(supervise("returns", body, restarts=restarts, backoff_base_s=0.001))
    await wait_until(lambda: restarts.get("returns") >= 2, 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
