"""All-or-nothing admission: a request refused by one limit consumes no other limit's quota."""

from __future__ import annotations

import pytest
from rl_support import SubjectsFactory, admission_request, admit, assert_usage

from crosslogic.errors import ConflictError
from crosslogic.ratelimit import Limits, RateLimiter


async def test_tenant_rejection_consumes_nothing_of_the_key(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, (key,) = new_subjects(key=Limits(rpm=10, tpm=1000, max_concurrency=10),
                                  tenant=Limits(rpm=3))
    assert all([(await admit(limiter, tenant, key, tokens=100)).admitted for _ in range(3)])
    for _ in range(5):
        refused = await admit(limiter, tenant, key, tokens=100)
        assert refused.rejection is not None and refused.rejection.subject_kind == "tenant"
    await assert_usage(limiter, key, requests=3, tokens=300, leases=3)


async def test_key_concurrency_rejection_consumes_nothing_of_the_tenant(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, (key,) = new_subjects(key=Limits(max_concurrency=1), tenant=Limits(rpm=100, tpm=10_000))
    held = await admit(limiter, tenant, key, tokens=500)
    refused = await admit(limiter, tenant, key, tokens=500)
    assert held.admitted and refused.rejection is not None
    assert refused.rejection.limit == "concurrency" and refused.rejection.subject_kind == "key"
    assert refused.rejection.retry_after_s is not None and refused.rejection.retry_after_s <= 1.0
    await assert_usage(limiter, tenant, requests=1, tokens=500, leases=1)
    await limiter.settle(held, 20)
    assert (await admit(limiter, tenant, key, tokens=500)).admitted


async def test_tpm_rejection_consumes_no_request_quota(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, (key,) = new_subjects(tenant=Limits(rpm=5, tpm=100))
    assert (await admit(limiter, tenant, key, tokens=90)).admitted
    for _ in range(10):
        assert not (await admit(limiter, tenant, key, tokens=20)).admitted
    await assert_usage(limiter, tenant, requests=1, tokens=90, leases=1)
    assert (await limiter.state(tenant)).remaining_requests == 4


async def test_keys_of_one_tenant_share_its_limit(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, keys = new_subjects(key=Limits(rpm=4), tenant=Limits(rpm=6), keys=3)
    admitted = [(await admit(limiter, tenant, keys[i % 3])).admitted for i in range(12)]
    assert sum(admitted) == 6
    for key in keys:
        assert (await limiter.state(key)).requests_in_window == 2


async def test_headers_follow_the_tighter_subject(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, (key,) = new_subjects(key=Limits(rpm=10, tpm=50), tenant=Limits(rpm=3, tpm=1000))
    admission = await admit(limiter, tenant, key, tokens=20)
    assert admission.requests is not None and admission.tokens is not None
    assert (admission.requests.limit, admission.requests.remaining) == (3, 2)
    assert (admission.tokens.limit, admission.tokens.remaining) == (50, 30)


async def test_the_longest_binding_limit_is_reported(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    """Key RPM frees in ~1 window, tenant concurrency within 1 s: report the RPM (retrying at the
    concurrency time would fail again)."""
    tenant, (key,) = new_subjects(key=Limits(rpm=1), tenant=Limits(max_concurrency=1))
    assert (await admit(limiter, tenant, key)).admitted
    refused = await admit(limiter, tenant, key)
    assert refused.rejection is not None
    assert (refused.rejection.limit, refused.rejection.subject_kind) == ("rpm", "key")
    assert refused.rejection.retry_after_s is not None and refused.rejection.retry_after_s > 29


async def test_duplicate_request_id_is_a_conflict(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, (key,) = new_subjects(tenant=Limits(rpm=10))
    request = admission_request(tenant, key, tokens=5)
    assert (await limiter.admit(request)).admitted
    with pytest.raises(ConflictError):
        await limiter.admit(request)
    assert (await limiter.state(tenant)).requests_in_window == 1


async def test_rejected_admission_settles_and_extends_as_noops(
    limiter: RateLimiter, new_subjects: SubjectsFactory
) -> None:
    tenant, _ = new_subjects(tenant=Limits(rpm=0))
    refused = await admit(limiter, tenant)
    settled = await limiter.settle(refused, 10)
    assert settled.refunded_tokens == 0 and not settled.lease_released
    assert not await limiter.extend(refused)
