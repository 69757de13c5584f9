"""Redis stopped, frozen and restarted mid-run: the configured fail mode, no hang, automatic recovery.

These tests start their OWN redis-server on a free port (never the machine's Redis on 6379).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from rl_support import RecordingMetrics, admit

from crosslogic.errors import ServiceUnavailableError
from crosslogic.ratelimit import FailoverRateLimiter, Limits, RateLimitConfig, Subject
from crosslogic.ratelimit.redis_backend import RedisRateLimiter

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


class RedisProcess:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            for _ in range(100):
                try:
                    await client.ping()
                    return
                except (OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.05)
            raise RuntimeError("redis-server did not start")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)


@pytest.fixture
async def redis_process() -> AsyncIterator[RedisProcess]:
    process = RedisProcess()
    await process.start()
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.returncode is None:
            process.signal(signal.SIGCONT)
        await process.kill()


def _tenant(rpm: int) -> Subject:
    return Subject(kind="tenant", id="t-outage", tenant_id="t-outage", limits=Limits(rpm=rpm))


def _limiter(url: str, mode: str, metrics: RecordingMetrics) -> FailoverRateLimiter:
    config = RateLimitConfig(
        window_s=30.0, redis_timeout_s=0.2, fail_mode=mode, replicas=2, probe_interval_s=0.3,
        namespace="crosslogic-test:outage",
    )
    return FailoverRateLimiter(RedisRateLimiter.from_url(url, config), config, metrics)


async def _timed_admit(limiter: FailoverRateLimiter, tenant: Subject) -> tuple[object, float]:
    started = time.monotonic()
    try:
        result: object = await admit(limiter, tenant)
    except ServiceUnavailableError as exc:
        result = exc
    return result, time.monotonic() - started


async def _wait_for_recovery(limiter: FailoverRateLimiter, tenant: Subject) -> None:
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        result, _ = await _timed_admit(limiter, tenant)
        if getattr(result, "backend", None) == "redis":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("limiter did not switch back to Redis")


@asynccontextmanager
async def _running(
    redis_process: RedisProcess, mode: str, rpm: int
) -> AsyncIterator[tuple[FailoverRateLimiter, RecordingMetrics, Subject]]:
    """A limiter on the private Redis that has already admitted one request through Redis."""
    metrics = RecordingMetrics()
    limiter = _limiter(redis_process.url, mode, metrics)
    tenant = _tenant(rpm=rpm)
    try:
        assert (await admit(limiter, tenant)).backend == "redis"
        yield limiter, metrics, tenant
    finally:
        await limiter.close()


async def test_fail_open_uses_the_local_share_and_recovers(redis_process: RedisProcess) -> None:
    async with _running(redis_process, "open", rpm=11) as (limiter, metrics, tenant):
        shared = await admit(limiter, tenant)
        assert shared.admitted and shared.backend == "redis"
        assert limiter.status() == (True, "redis")  # what /ready shows

        await redis_process.kill()
        outcomes = [await _timed_admit(limiter, tenant) for _ in range(10)]
        assert limiter.status() == (True, "redis: unreachable, failing open")
        assert max(elapsed for _, elapsed in outcomes) < 0.5
        local = [a for a, _ in outcomes]
        assert all(getattr(a, "backend", None) == "local" for a in local)
        # This replica's share of rpm=11 across 2 replicas.
        assert sum(bool(getattr(a, "admitted", False)) for a in local) == 5
        assert "open" in metrics.fail_mode and metrics.backend_errors

        # Settling a Redis admission while Redis is down neither hangs nor raises.
        started = time.monotonic()
        assert not (await limiter.settle(shared, 3)).ok
        assert time.monotonic() - started < 0.5

        await redis_process.start()
        await _wait_for_recovery(limiter, tenant)
        assert "recovered" in metrics.fail_mode
        # Local admissions settle locally, also after recovery.
        settled = await limiter.settle(local[0], 0)  # type: ignore[arg-type]
        assert settled.ok and settled.lease_released


async def test_fail_closed_refuses_with_503_and_recovers(redis_process: RedisProcess) -> None:
    async with _running(redis_process, "closed", rpm=100) as (limiter, metrics, tenant):
        await redis_process.kill()
        for _ in range(5):
            result, elapsed = await _timed_admit(limiter, tenant)
            assert isinstance(result, ServiceUnavailableError) and elapsed < 0.5
            assert result.status_code == 503 and result.headers["retry-after"] == "1"
        assert metrics.fail_mode.count("closed") == 5
        assert limiter.status() == (False, "redis: unreachable, failing closed")  # /ready: not ready
        await redis_process.start()
        await _wait_for_recovery(limiter, tenant)
        assert limiter.status() == (True, "redis")


async def test_frozen_redis_times_out_instead_of_hanging(redis_process: RedisProcess) -> None:
    """A Redis that accepts but never answers (SIGSTOP) costs at most one timeout per probe."""
    async with _running(redis_process, "open", rpm=100) as (limiter, metrics, tenant):
        redis_process.signal(signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(*(_timed_admit(limiter, tenant) for _ in range(20)))
        assert time.monotonic() - started < 1.0
        assert all(getattr(r, "backend", None) == "local" for r, _ in results)
        # After the probe interval exactly one request probes the frozen Redis; the rest stay local.
        errors = len(metrics.backend_errors)
        await asyncio.sleep(0.35)
        results = await asyncio.gather(*(_timed_admit(limiter, tenant) for _ in range(10)))
        assert all(getattr(r, "backend", None) == "local" for r, _ in results)
        assert len(metrics.backend_errors) == errors + 1
        assert sorted(elapsed for _, elapsed in results)[-2] < 0.1
        redis_process.signal(signal.SIGCONT)
        await _wait_for_recovery(limiter, tenant)


async def test_late_replies_leave_no_lease_behind(redis_process: RedisProcess) -> None:
    """A timed-out call may still run on Redis: nothing it holds may outlive the outage.

    SIGSTOP makes Redis answer late: commands sent while frozen run when it resumes. An admission
    sent then is granted there although we admitted locally, and a settlement skipped while the
    breaker was open would leave its lease for the whole TTL (30 s here). Both are settled in the
    background once Redis answers: no lease is left a moment later.
    """
    metrics = RecordingMetrics()
    limiter = _limiter(redis_process.url, "open", metrics)
    tenant = Subject(kind="tenant", id="t-late", tenant_id="t-late", limits=Limits(max_concurrency=100))
    try:
        shared = await admit(limiter, tenant)
        assert shared.backend == "redis"
        redis_process.signal(signal.SIGSTOP)
        local = await admit(limiter, tenant)  # sent, timed out: runs on Redis when it resumes
        assert local.backend == "local" and local.admitted
        assert not (await limiter.settle(shared, 0)).ok  # breaker open: not sent
        assert limiter.unsettled == 2
        redis_process.signal(signal.SIGCONT)
        assert (await limiter.settle(local, 0)).ok  # local admissions settle locally
        deadline = time.monotonic() + 3.0
        while limiter.unsettled and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert limiter.unsettled == 0
        state = await limiter.state(tenant)
        assert state.active_leases == 0, state
        assert not limiter.degraded
    finally:
        await limiter.close()
