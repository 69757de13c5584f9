"""Fixtures of the rate-limiter suite: every backend-agnostic test runs against the in-memory backend
and against the real Redis at REDIS_URL (default redis://127.0.0.1:6379/0).

Redis keys of a test session live under a unique namespace that is deleted at the end, so runs sharing
one Redis never see each other. Windows are shortened (about a second) to keep the suite fast; the
algorithm does not depend on the window length.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from rl_support import LimiterFactory, SubjectsFactory

from crosslogic.ratelimit import InMemoryRateLimiter, Limits, RateLimitConfig, RateLimiter, Subject
from crosslogic.ratelimit.redis_backend import RedisRateLimiter


@pytest.fixture(scope="session")
def rl_redis_url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
async def rl_namespace(rl_redis_url: str) -> AsyncIterator[str]:
    namespace = f"crosslogic-test:rl:{uuid.uuid4().hex[:12]}"
    yield namespace
    client = aioredis.Redis.from_url(rl_redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_limiter(
    request: pytest.FixtureRequest, rl_redis_url: str, rl_namespace: str
) -> AsyncIterator[LimiterFactory]:
    """`await make_limiter(window_s=1.0)`; several calls with Redis give independent clients sharing
    state, like ingress replicas do."""
    made: list[RateLimiter] = []
    shared_memory: dict[float, InMemoryRateLimiter] = {}

    async def factory(**config: Any) -> RateLimiter:
        # A generous timeout: this machine is shared with vLLM runs; outage tests set their own.
        defaults = {"window_s": 1.0, "redis_timeout_s": 2.0}
        cfg = RateLimitConfig(namespace=rl_namespace, **{**defaults, **config})
        limiter: RateLimiter
        if request.param == "redis":
            limiter = RedisRateLimiter.from_url(rl_redis_url, cfg)
            await limiter.load_scripts()
        else:
            # One process holds the in-memory state: "replicas" share the same instance.
            limiter = shared_memory.setdefault(cfg.window_s, InMemoryRateLimiter(cfg))
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.close()


@pytest.fixture
def new_subjects() -> SubjectsFactory:
    """`new_subjects(key=Limits(...), tenant=Limits(...), keys=1)` -> a fresh tenant and its keys."""

    def make(
        key: Limits | None = None, tenant: Limits | None = None, *, keys: int = 1
    ) -> tuple[Subject, list[Subject]]:
        tenant_id = f"t-{uuid.uuid4().hex[:10]}"
        tenant_subject = Subject(kind="tenant", id=tenant_id, tenant_id=tenant_id,
                                 limits=tenant or Limits())
        key_subjects = [
            Subject(kind="key", id=f"k{i}-{uuid.uuid4().hex[:6]}", tenant_id=tenant_id,
                    limits=key or Limits())
            for i in range(keys)
        ]
        return tenant_subject, key_subjects

    return make



@pytest.fixture
async def limiter(make_limiter: LimiterFactory) -> RateLimiter:
    """A limiter with a 30 s window, for tests that never wait for the window to pass."""
    return await make_limiter(window_s=30.0)
