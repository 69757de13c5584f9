"""TPM: reservation at admission, settlement to the actual count, never double-counted."""

from __future__ import annotations

import asyncio

from rl_support import LimiterFactory, SubjectsFactory, admit

from crosslogic.ratelimit import Limits, RateLimiter


async def test_unused_reservation_is_refunded_at_settle(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, (key,) = new_subjects(tenant=Limits(tpm=1000))
    a1 = await admit(limiter, tenant, key, tokens=400)
    a2 = await admit(limiter, tenant, key, tokens=400)
    assert a1.admitted and a2.admitted
    assert a2.tokens is not None and a2.tokens.remaining == 200
    refused = await admit(limiter, tenant, key, tokens=400)
    assert not refused.admitted and refused.rejection is not None
    assert refused.rejection.limit == "tpm" and refused.rejection.requested == 400

    settled = await limiter.settle(a1, 50)
    assert settled.refunded_tokens == 350 and settled.lease_released
    assert (await limiter.state(tenant)).tokens_in_window == 450
    # A second settle (retry, double finally) changes nothing.
    again = await limiter.settle(a1, 50)
    assert again.refunded_tokens == 0 and not again.lease_released
    assert (await limiter.state(tenant)).tokens_in_window == 450

    a3 = await admit(limiter, tenant, key, tokens=400)
    assert a3.admitted and a3.tokens is not None and a3.tokens.remaining == 150
    await limiter.settle(a2, 400)
    await limiter.settle(a3, 0)
    state = await limiter.state(tenant)
    assert state.tokens_in_window == 450 and state.requests_in_window == 3
    assert state.remaining_tokens == 550 and state.active_leases == 0


async def test_tokens_beyond_the_reservation_are_counted(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, _ = new_subjects(tenant=Limits(tpm=100))
    admission = await admit(limiter, tenant, tokens=10)
    settled = await limiter.settle(admission, 60)
    assert settled.refunded_tokens == 0
    assert (await limiter.state(tenant)).tokens_in_window == 60
    assert not (await admit(limiter, tenant, tokens=41)).admitted
    assert (await admit(limiter, tenant, tokens=40)).admitted


async def test_tokens_leave_the_window(
    make_limiter: LimiterFactory, new_subjects: SubjectsFactory
) -> None:
    limiter = await make_limiter(window_s=1.0)
    tenant, _ = new_subjects(tenant=Limits(tpm=100))
    first = await admit(limiter, tenant, tokens=100)
    refused = await admit(limiter, tenant, tokens=1)
    assert first.admitted and not refused.admitted
    assert refused.rejection is not None and refused.rejection.retry_after_s is not None
    assert 0 < refused.rejection.retry_after_s <= 1.0
    await asyncio.sleep(refused.rejection.retry_after_s + 0.05)
    assert (await admit(limiter, tenant, tokens=100)).admitted
    # Settling a request that already left the window does not touch the new one's tokens.
    await limiter.settle(first, 0)
    assert (await limiter.state(tenant)).tokens_in_window == 100


async def test_tpm_retry_after_waits_for_enough_tokens(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, _ = new_subjects(tenant=Limits(tpm=100))
    for tokens in (10, 10, 70):
        assert (await admit(limiter, tenant, tokens=tokens)).admitted
    # 95 needs 85 freed: the third request (the 70) must leave, not just the first.
    refused = await admit(limiter, tenant, tokens=95)
    assert refused.rejection is not None and refused.rejection.retry_after_s is not None
    small = await admit(limiter, tenant, tokens=15)
    assert not small.admitted and small.rejection is not None
    assert small.rejection.retry_after_s is not None
    assert small.rejection.retry_after_s < refused.rejection.retry_after_s


async def test_request_larger_than_tpm_never_fits(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, (key,) = new_subjects(key=Limits(tpm=500))
    refused = await admit(limiter, tenant, key, tokens=501)
    assert refused.rejection is not None
    assert refused.rejection.limit == "tpm" and refused.rejection.retry_after_s is None
    assert refused.rejection.value == 500 and refused.rejection.requested == 501
    assert (await admit(limiter, tenant, key, tokens=500)).admitted
