"""What this process believes about its PostgreSQL: reachable, or away since when and why.

The request path must not wait for a database that is away: the key authenticator marks it down the
first time a lookup times out or loses its connection, serves the keys it has cached meanwhile, and
marks it up again when any lookup (or the invalidation listener) gets through. `/ready` reads the same
state and probes with a real `SELECT 1` bounded by a short timeout.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

# What a lost, frozen or refusing server raises through asyncpg (besides our own timeouts).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)


class DatabaseHealth:
    def __init__(self) -> None:
        self._down_since: float | None = None  # monotonic
        self.reason = ""
        self.outages = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def down_for_s(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def mark_down(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.outages += 1
        self.reason = reason

    def mark_up(self) -> None:
        self._down_since = None
        self.reason = ""


class DatabaseProbe:
    """A real `SELECT 1` through the pool, bounded by `timeout_s`, for `/ready`.

    The query runs as its own task and is left to finish (or fail) in the background on timeout:
    cancelling a query on a frozen connection makes asyncpg wait for the server to confirm. A probe
    still pending is waited on again instead of starting another, so polling `/ready` through an
    outage holds at most one pooled connection.
    """

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 1.0) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._pending: asyncio.Future[object] | None = None

    async def check(self) -> str | None:
        """None when PostgreSQL answered within the timeout, else why not (one line)."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._pool.fetchval("SELECT 1"))
            self._pending.add_done_callback(_consume)
        query = self._pending
        done, _ = await asyncio.wait({query}, timeout=self._timeout_s)
        if not done:
            return f"no answer to SELECT 1 within {self._timeout_s:g}s"
        if query.cancelled():
            return "probe cancelled"
        exc = query.exception()
        if exc is None:
            return None
        return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def _consume(task: asyncio.Future[object]) -> None:
    # Retrieved so the event loop never logs "exception was never retrieved" for an abandoned probe.
    if not task.cancelled():
        task.exception()
