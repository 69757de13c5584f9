"""The limiter's memory is bounded per subject and follows live traffic, on both backends.

A subject never holds more than `max_entries_per_subject` requests in its window nor as many leases:
limits below the ceiling stay exact, larger (or absent) ones act as the ceiling. Idle subjects are
forgotten (in memory: by the sweep; in Redis: every key carries a TTL).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from rl_support import LimiterFactory, SubjectsFactory, admit, assert_usage

from crosslogic.ratelimit import InMemoryRateLimiter, Limits, RateLimitConfig
from crosslogic.ratelimit.redis_backend import RedisRateLimiter
from crosslogic.ratelimit.subjects import key_subject, tenant_subject


async def test_a_huge_limit_cannot_grow_one_log_past_the_ceiling(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter(window_s=30.0, max_entries_per_subject=5)
    for limits in (Limits(rpm=10**9), Limits(tpm=10**12)):  # a huge RPM; no RPM but a TPM (windowed)
        tenant, (key,) = new_subjects(key=limits)
        results = [await admit(limiter, tenant, key, tokens=1) for _ in range(7)]
        assert [a.admitted for a in results] == [True] * 5 + [False] * 2
        rejection = results[5].rejection
        assert rejection is not None and (rejection.limit, rejection.value, rejection.subject_id) == ("rpm", 5, key.id)
        assert rejection.retry_after_s is not None and 29 < rejection.retry_after_s <= 30
        await assert_usage(limiter, key, requests=5, tokens=5)


async def test_limits_below_the_ceiling_stay_exact(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter(window_s=30.0, max_entries_per_subject=5)
    tenant, (key,) = new_subjects(key=Limits(rpm=3, max_concurrency=4))
    results = [await admit(limiter, tenant, key) for _ in range(5)]
    assert [a.admitted for a in results] == [True, True, True, False, False]
    assert results[3].rejection is not None and results[3].rejection.value == 3


async def test_leases_are_bounded_even_without_limits(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter(window_s=30.0, max_entries_per_subject=5)
    tenant, (key,) = new_subjects()  # no limits at all: no log, but one lease per request in flight
    held = [await admit(limiter, tenant, key) for _ in range(5)]
    refused = await admit(limiter, tenant, key)
    assert all(a.admitted for a in held) and not refused.admitted
    assert refused.rejection is not None and (refused.rejection.limit, refused.rejection.value) == ("concurrency", 5)
    await limiter.settle(held[0], 0)
    assert (await admit(limiter, tenant, key)).admitted
    await assert_usage(limiter, tenant, requests=0, leases=5)


async def test_idle_subjects_are_forgotten() -> None:
    now = [1000.0]
    limiter = InMemoryRateLimiter(RateLimitConfig(window_s=10.0), clock=lambda: now[0])
    for i in range(50):
        tenant = tenant_subject(f"t{i}", None)
        key = key_subject(f"t{i}", f"k{i}", Limits(rpm=10))
        admission = await admit(limiter, tenant, key, ttl=5.0)
        if i % 2:
            await limiter.settle(admission, 0)  # the others keep their lease until it expires
    assert limiter.subjects == 100
    now[0] += 21.0  # past the window and every lease, and past the next sweep
    await admit(limiter, tenant_subject("fresh", None))
    assert limiter.subjects == 1


@pytest.mark.redis
async def test_every_redis_key_expires(new_subjects: SubjectsFactory, rl_redis_url: str, rl_namespace: str) -> None:
    limiter = RedisRateLimiter.from_url(
        rl_redis_url, RateLimitConfig(window_s=2.0, namespace=rl_namespace, redis_timeout_s=2.0))
    client = aioredis.Redis.from_url(rl_redis_url)
    try:
        await limiter.load_scripts()
        tenant, (key,) = new_subjects(key=Limits(rpm=10, tpm=1000), tenant=Limits(max_concurrency=5))
        settled = await admit(limiter, tenant, key, tokens=10, ttl=3.0)
        streaming = await admit(limiter, tenant, key, tokens=10, ttl=3.0)
        await limiter.settle(settled, 4)
        assert await limiter.extend(streaming, 4.0)
        await limiter.state(key)
        await limiter.state(tenant)
        keys = [k async for k in client.scan_iter(match=f"{rl_namespace}:{{{tenant.tenant_id}}}:*")]
        assert len(keys) == 4  # the key's log, tok and lease; the tenant (no window) its lease only
        for k in keys:
            ttl_ms = await client.pttl(k)
            assert 0 < ttl_ms <= 5_000, (k, ttl_ms)  # window or longest lease, + 1 s
    finally:
        await client.aclose()
        await limiter.close()
