"""`/ready` entries for the ingress's own dependencies, each a real round trip with a short timeout.

- postgres: `SELECT 1` through the pool. Unreachable keeps the ingress ready ("serving cached keys"):
  every replica shares the database, so taking them all out of rotation would turn a degraded API
  (cached keys answered, usage buffered) into no API at all. `data.degraded` says so.
- redis (when REDIS_URL is set): a real PING; its `ok` follows the limiter's fail mode, like the
  `ratelimit` entry (fail-open keeps admitting, fail-closed answers 503 meanwhile).
- billing: the billing actor's loops each finished an iteration lately (crosslogic/loop_liveness.py).

`service_readiness` puts them together with the gateway's own readiness and the limiter's state: what
GET /ready answers, and what the readiness watcher (crosslogic/alerts/readiness_watch.py) alerts on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import asyncpg
import redis.asyncio as aioredis

from crosslogic.api.gateway import DependencyStatus, Readiness
from crosslogic.loop_liveness import LoopState, describe_loops
from crosslogic.storage.db_health import DatabaseHealth, DatabaseProbe

PROBE_TIMEOUT_S = 1.0


class LimiterStatus(Protocol):
    def status(self) -> tuple[bool, str]: ...


class DependencyProbes:
    def __init__(
        self,
        pool: asyncpg.Pool,
        db_health: DatabaseHealth,
        *,
        cached_keys: Callable[[], int] = lambda: 0,
        buffered_usage: Callable[[], int] = lambda: 0,
        redis_url: str | None = None,
        redis_fail_open: bool = True,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._db = DatabaseProbe(pool, timeout_s=timeout_s)
        self._db_health = db_health
        self._cached_keys = cached_keys
        self._buffered_usage = buffered_usage
        self._timeout_s = timeout_s
        self._redis_fail_open = redis_fail_open
        # One connection of its own: the limiter's pool may be saturated or its breaker open.
        self._redis = (
            aioredis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                    max_connections=1, single_connection_client=True)
            if redis_url else None
        )
        self._redis_lock = asyncio.Lock()

    async def check(self) -> dict[str, DependencyStatus]:
        checks: dict[str, Any] = {"postgres": self.postgres()}
        if self._redis is not None:
            checks["redis"] = self.redis()
        results = await asyncio.gather(*checks.values())
        return dict(zip(checks, results, strict=True))

    async def postgres(self) -> DependencyStatus:
        started = time.perf_counter()
        failure = await self._db.check()
        data: dict[str, Any] = {"buffered_usage_rows": self._buffered_usage()}
        if failure is None:
            self._db_health.mark_up()
            ms = (time.perf_counter() - started) * 1000
            return DependencyStatus(ok=True, detail=f"SELECT 1 in {ms:.1f} ms",
                                    data={**data, "reachable": True, "degraded": False})
        self._db_health.mark_down(failure)
        cached = self._cached_keys()
        return DependencyStatus(
            ok=True,
            detail=f"unreachable ({failure}), serving cached keys ({cached} cached; "
                   f"uncached keys get 503; usage buffered: {data['buffered_usage_rows']} rows)",
            data={**data, "reachable": False, "degraded": True, "cached_keys": cached,
                  "down_for_s": round(self._db_health.down_for_s(), 1)},
        )

    async def redis(self) -> DependencyStatus:
        assert self._redis is not None
        started = time.perf_counter()
        try:
            async with self._redis_lock:
                await asyncio.wait_for(self._redis.ping(), self._timeout_s)
        except (TimeoutError, OSError, aioredis.RedisError) as exc:
            mode = "open" if self._redis_fail_open else "closed"
            return DependencyStatus(
                ok=self._redis_fail_open,
                detail=f"unreachable (PING: {type(exc).__name__}); rate limits failing {mode}",
                data={"reachable": False, "degraded": True},
            )
        ms = (time.perf_counter() - started) * 1000
        return DependencyStatus(ok=True, detail=f"PING in {ms:.1f} ms", data={"reachable": True})

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


# Reported and alerted on, but a replica stays in rotation without them (see service_readiness).
NOT_GATING_READY = frozenset({"billing"})


def billing_readiness(status: dict[str, Any]) -> DependencyStatus:
    """The billing entry from the billing actor's `status()`: ok only when its loops run."""
    loops = {name: LoopState.model_validate(raw) for name, raw in (status.get("loops") or {}).items()}
    if not loops:
        return DependencyStatus(ok=False, detail="billing loops not started", data=dict(status))
    ok, detail = describe_loops(loops)
    return DependencyStatus(ok=ok, detail=detail, data=dict(status))


async def service_readiness(
    gateway_readiness: Callable[[], Awaitable[Readiness]],
    probes: DependencyProbes | None = None,
    limiter: LimiterStatus | None = None,
) -> Readiness:
    """The ingress's whole readiness: the gateway's (router, engines, regions, billing), the probes'
    (postgres, redis) and the rate limiter's; ready when every entry that serving needs is ok.

    Billing's entry is reported (and pages as dependency_down/billing, critical) but does not take
    the replica out of rotation: its loops export the ledger in the background, usage keeps being
    recorded while they stall, and they stall on every replica at once (a PostgreSQL outage stalls
    the webhook loop within ~4 s), which would turn "billing late" into "no API at all".
    """
    readiness = await gateway_readiness()
    if probes is not None:
        readiness.dependencies.update(await probes.check())
    if limiter is not None:
        ok, detail = limiter.status()
        readiness.dependencies["ratelimit"] = DependencyStatus(ok=ok, detail=detail)
    readiness.ready = all(d.ok for name, d in readiness.dependencies.items() if name not in NOT_GATING_READY)
    return readiness
