"""LeaseScope: renewal while a long request runs, settlement on every exit path."""

from __future__ import annotations

import asyncio

import pytest
from rl_support import LimiterFactory, SubjectsFactory, admit, assert_usage

from crosslogic.ratelimit import LeaseScope, Limits


async def test_long_stream_keeps_its_lease_and_settles(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter(window_s=30.0)
    tenant, (key,) = new_subjects(key=Limits(max_concurrency=1, tpm=1000))
    admission = await admit(limiter, tenant, key, tokens=500, ttl=0.6)
    async with LeaseScope(limiter, admission) as scope:
        await asyncio.sleep(1.5)  # 2.5 TTLs: only renewal keeps the slot
        assert not (await admit(limiter, tenant, key)).admitted
        scope.actual_tokens = 120
    assert scope.settlement is not None and scope.settlement.refunded_tokens == 380
    await assert_usage(limiter, key, requests=1, tokens=120, leases=0)


async def test_failure_and_cancellation_settle_too(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter(window_s=30.0)
    tenant, (key,) = new_subjects(key=Limits(max_concurrency=2, tpm=1000))

    failing = await admit(limiter, tenant, key, tokens=100)
    with pytest.raises(RuntimeError):
        async with LeaseScope(limiter, failing):
            raise RuntimeError("engine error")

    async def stream() -> None:
        admission = await admit(limiter, tenant, key, tokens=100)
        async with LeaseScope(limiter, admission) as scope:
            scope.actual_tokens = 7
            await asyncio.sleep(10)

    task = asyncio.create_task(stream())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Unknown usage keeps the whole reservation (100); the cancelled stream counted 7.
    await assert_usage(limiter, key, requests=2, tokens=107, leases=0)


async def test_rejected_admission_scope_is_a_noop(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter(window_s=30.0)
    tenant, _ = new_subjects(tenant=Limits(rpm=0))
    refused = await admit(limiter, tenant)
    async with LeaseScope(limiter, refused) as scope:
        pass
    assert scope.settlement is not None and not scope.settlement.lease_released
