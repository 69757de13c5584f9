"""The invalidation listener survives a silently dead connection (no FIN, no error: packets vanish).

A TCP proxy between the listener's pool and PostgreSQL black-holes every connection open at the
moment of `freeze()`. The listener must notice within its health-check budget, tell the cache to
stop trusting itself, then reconnect and hear notifications again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from crosslogic.auth.invalidation_listener import AUTH_CHANNEL, InvalidationListener


class BlackHoleProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._links: list[dict[str, Any]] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        for link in self._links:
            link["frozen"] = True

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for link in self._links:
            for writer in link["writers"]:
                writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        link: dict[str, Any] = {"frozen": False, "writers": [writer, up_writer]}
        self._links.append(link)
        await asyncio.gather(
            self._pump(reader, up_writer, link), self._pump(up_reader, writer, link),
            return_exceptions=True,
        )

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: dict[str, Any]) -> None:
        while data := await src.read(65536):
            if not link["frozen"]:  # frozen: bytes vanish, nobody is told
                dst.write(data)
                await dst.drain()
        dst.close()


@pytest.fixture
async def proxied_pool(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, BlackHoleProxy]]:
    parts = urlsplit(database_url)
    proxy = BlackHoleProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    # user[:password] as given (the embedded server requires its password).
    credentials = parts.netloc.rpartition("@")[0]
    user = f"{credentials}@" if credentials else ""
    via_proxy = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    pool = await asyncpg.create_pool(via_proxy, min_size=1, max_size=3)
    yield pool, proxy
    pool.terminate()
    await proxy.close()


async def wait_until(condition: Callable[[], bool], limit_s: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit_s, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_silently_dead_connection_is_distrusted_then_replaced(
    proxied_pool: tuple[asyncpg.Pool, BlackHoleProxy], db_pool: asyncpg.Pool
) -> None:
    pool, proxy = proxied_pool
    events: list[str] = []
    messages: list[dict[str, Any] | None] = []
    listener = InvalidationListener(
        pool,
        on_message=messages.append,
        on_connected=lambda: events.append("connected"),
        on_lost=lambda: events.append("lost"),
        health_interval_s=0.2,
        dead_after_s=1.0,
    )
    assert await listener.start()
    try:
        await db_pool.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, json.dumps({"n": 1}))
        await wait_until(lambda: {"n": 1} in messages, 1.0)

        proxy.freeze()
        # Distrusted within one health interval plus one probe timeout: well inside 1 s.
        assert await wait_until(lambda: not listener.connected, 1.0) < 0.8
        # Declared dead after dead_after_s, then a fresh connection (the proxy passes new ones).
        await wait_until(lambda: events.count("connected") == 2, 5.0)
        assert events == ["connected", "lost", "connected"]
        await db_pool.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, json.dumps({"n": 2}))
        await wait_until(lambda: {"n": 2} in messages, 1.0)
    finally:
        await listener.close()


async def test_garbage_payload_is_reported_as_unknown(db_pool: asyncpg.Pool) -> None:
    messages: list[dict[str, Any] | None] = []
    listener = InvalidationListener(
        db_pool, on_message=messages.append, on_connected=lambda: None, on_lost=lambda: None
    )
    assert await listener.start()
    try:
        await db_pool.execute("SELECT pg_notify($1, 'not json')", AUTH_CHANNEL)
        await wait_until(lambda: messages == [None], 1.0)
    finally:
        await listener.close()
