"""LISTEN on `crosslogic_auth`, reconnecting forever, so every replica's key cache hears changes.

Migration 0001's triggers NOTIFY this channel (at commit) whenever a key or tenant changes in a way
that can alter an authentication decision. The listener holds one pooled connection (so the pool needs
max_size >= 2), health-checks it twice a second (a silently dead TCP connection delivers nothing and
raises nothing), and reports `on_lost` the moment it stops trusting the connection, so the cache can
stop trusting itself too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from crosslogic.storage.executor import Connection
from crosslogic.supervisor import LoopRestarts, supervise

log = logging.getLogger(__name__)

AUTH_CHANNEL = "crosslogic_auth"


class InvalidationListener:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        on_message: Callable[[dict[str, Any] | None], None],
        on_connected: Callable[[], None],
        on_lost: Callable[[], None],
        channel: str = AUTH_CHANNEL,
        health_interval_s: float = 0.5,
        max_backoff_s: float = 5.0,
        dead_after_s: float = 5.0,
        restarts: LoopRestarts | None = None,
    ) -> None:
        self._pool = pool
        self._restarts = restarts
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._channel = channel
        self._health_interval_s = health_interval_s
        self._max_backoff_s = max_backoff_s
        self._dead_after_s = dead_after_s
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0
        self.connections = 0
        self.backend_pid: int | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self, *, wait_s: float = 5.0) -> bool:
        """Start listening; return whether the first LISTEN succeeded within `wait_s`."""
        if self._task is None:
            # The supervisor is the reconnect loop: a lost connection is a restart, logged and counted;
            # a session that stayed up a couple of health checks resets the backoff to 0.1 s. Alerted
            # after 10 failed attempts in a row (about 20 s down), not on a blip.
            self._task = asyncio.create_task(supervise(
                "auth_listener", self._session, restarts=self._restarts, backoff_base_s=0.1,
                backoff_max_s=self._max_backoff_s, healthy_after_s=max(1.0, 2 * self._health_interval_s),
                alert_after_failures=10,
            ), name="crosslogic-auth-listener")
        try:
            await asyncio.wait_for(self._connected.wait(), wait_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _session(self) -> None:
        # Any end means notifications may have been missed: the supervisor reconnects, never gives up.
        try:
            await self._listen_once()
        except Exception:
            self.reconnects += 1
            raise

    async def _listen_once(self) -> None:
        conn = await self._pool.acquire()
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _c: closed.set())
        subscribed = False
        try:
            await conn.add_listener(self._channel, self._deliver)
            subscribed = True
            self.connections += 1
            self.backend_pid = conn.get_server_pid()
            self._connected.set()
            self._on_connected()
            while not closed.is_set():
                try:
                    await asyncio.wait_for(closed.wait(), self._health_interval_s)
                except TimeoutError:
                    await self._check_alive(conn)
            raise ConnectionError("listener connection closed")
        finally:
            self._connected.clear()
            if subscribed:
                self._on_lost()
            # A connection that failed a health check cannot be trusted back into the pool.
            conn.terminate()
            await self._pool.release(conn)

    async def _check_alive(self, conn: Connection) -> None:
        probe = asyncio.ensure_future(conn.fetchval("SELECT 1"))
        try:
            done, _ = await asyncio.wait({probe}, timeout=self._health_interval_s)
            if done:
                probe.result()
                return
            # Slow or dead? Until we know, the cache must not trust itself (short TTL). A slow but
            # live connection loses no notifications, so when it answers nothing needs invalidating.
            self._connected.clear()
            await asyncio.wait_for(probe, self._dead_after_s)
            self._connected.set()
        finally:
            if not probe.done():
                probe.cancel()

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            # asyncpg passes the NOTIFY payload as text; nothing else is a message of ours.
            message = json.loads(payload) if isinstance(payload, str) else None
        except ValueError:
            message = None
        self._on_message(message if isinstance(message, dict) else None)
