"""Concurrency leases: expiry, extension, and no leak across 1,000 requests with cancellations."""

from __future__ import annotations

import asyncio
import random
import time

from rl_support import LimiterFactory, SubjectsFactory, admission_request, admit

from crosslogic.ratelimit import FailoverRateLimiter, Limits, RateLimiter, Subject


async def test_lease_expires_by_itself(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter()
    tenant, (key,) = new_subjects(key=Limits(max_concurrency=1))
    # Held by a "replica" that dies: never settled.
    assert (await admit(limiter, tenant, key, ttl=1.0)).admitted
    leased_at = time.monotonic()
    assert not (await admit(limiter, tenant, key)).admitted
    await asyncio.sleep(max(0.0, leased_at + 1.05 - time.monotonic()))
    assert (await limiter.state(key)).active_leases == 0
    assert (await admit(limiter, tenant, key)).admitted


async def test_extend_keeps_a_long_stream_leased(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter()
    tenant, (key,) = new_subjects(tenant=Limits(max_concurrency=1))
    stream = await admit(limiter, tenant, key, ttl=1.0)
    for _ in range(4):
        await asyncio.sleep(0.4)
        assert await limiter.extend(stream)
    # 1.6 s after admission, past the original TTL: still held thanks to the extensions.
    assert not (await admit(limiter, tenant, key)).admitted
    assert await limiter.extend(stream, 0.1)
    await asyncio.sleep(0.15)
    # Expired: extending cannot resurrect it (the slot may already be someone else's).
    assert not await limiter.extend(stream)
    assert (await admit(limiter, tenant, key)).admitted
    settled = await limiter.settle(stream, 0)
    assert not settled.lease_released


async def _request(limiter: RateLimiter, tenant: Subject, key: Subject, fail: bool) -> str:
    """What the ingress does: admit, stream, settle in `finally` on every path."""
    admission = await limiter.admit(admission_request(tenant, key, tokens=64))
    if not admission.admitted:
        return "rejected"
    try:
        await asyncio.sleep(random.uniform(0.02, 0.04))
        if fail:
            raise RuntimeError("engine error")
        return "ok"
    finally:
        await limiter.settle(admission, random.randint(0, 64))


async def test_thousand_requests_with_cancellations_leave_no_lease(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    """Through the stack the ingress uses (fail mode on top of the backend); clients are cancelled
    at random moments, including while their admission is in flight."""
    limiter = FailoverRateLimiter(await make_limiter(window_s=30.0))
    tenant, keys = new_subjects(key=Limits(max_concurrency=40), tenant=Limits(max_concurrency=64),
                                keys=2)
    outcomes: dict[str, int] = {"ok": 0, "rejected": 0, "cancelled": 0, "error": 0}

    async def cancel_later(task: asyncio.Task[str]) -> None:
        await asyncio.sleep(random.uniform(0.0, 0.015))
        task.cancel()

    for batch in range(10):
        tasks = [
            asyncio.create_task(_request(limiter, tenant, keys[i % 2], fail=i % 10 == 7))
            for i in range(100)
        ]
        # A third of the clients disconnect (mid-admission or mid-stream).
        cancellers = [cancel_later(t) for i, t in enumerate(tasks) if i % 3 == batch % 3]
        await asyncio.gather(*cancellers)
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, asyncio.CancelledError):
                outcomes["cancelled"] += 1
            elif isinstance(result, RuntimeError):
                outcomes["error"] += 1
            else:
                outcomes[str(result)] += 1
    assert sum(outcomes.values()) == 1000
    # Cancelled clients that had already been rejected count as rejected.
    assert outcomes["cancelled"] > 150 and outcomes["rejected"] > 0
    assert outcomes["ok"] > 0 and outcomes["error"] > 0
    # Orphaned admissions are released in the background; within a second nothing is held.
    await asyncio.sleep(0.2)
    for subject in (tenant, *keys):
        assert (await limiter.state(subject)).active_leases == 0
