"""Admission alongside the engine call: only with clear room, and exact whatever the race.

Against the real in-memory limiter (the one the in-cluster actor runs): which requests may overlap
(`Headroom`), and what an overlapped admission leaves behind when it is refused, granted or abandoned.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest

from crosslogic.api.admission import AdmissionGate, admit
from crosslogic.api.headroom import Headroom
from crosslogic.auth.context import AuthContext
from crosslogic.errors import CrossLogicError
from crosslogic.ratelimit import AdmissionRequest, InMemoryRateLimiter, RateLimitConfig
from crosslogic.ratelimit.subjects import admission_request_for, key_subject
from crosslogic.tenants.models import Limits

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}


def _auth(**key_limits: int) -> AuthContext:
    return AuthContext(
        tenant_id=uuid4(), tenant_name="t", key_id=uuid4(), key_name="k", key_prefix="sk-cl-test",
        scopes=frozenset(), key_limits=Limits(**key_limits), tenant_limits=Limits(), stripe_customer_id=None,
    )


async def _admit(limiter: InMemoryRateLimiter, headroom: Headroom, auth: AuthContext, n: int) -> AdmissionGate:
    return await admit(
        limiter, auth, request_id=f"req-{n}-{uuid4().hex[:6]}", endpoint="chat", body=BODY,
        model="m", max_model_len=2048, lease_ttl_s=30.0, headroom=headroom,
    )


def _request(auth: AuthContext, reserved: int = 20) -> AdmissionRequest:
    return admission_request_for(auth, request_id=f"r-{uuid4().hex[:8]}", reserved_tokens=reserved, model="m")


async def _leases(limiter: InMemoryRateLimiter, auth: AuthContext) -> int:
    state = await limiter.state(key_subject(auth.tenant_id, auth.key_id, auth.key_limits))
    return state.active_leases


async def test_first_request_of_a_key_waits_for_its_admission_then_the_next_overlap() -> None:
    limiter, headroom = InMemoryRateLimiter(RateLimitConfig()), Headroom()
    auth = _auth(rpm=100, tpm=100_000, max_concurrency=10)
    first = await _admit(limiter, headroom, auth, 1)
    assert not first.overlapped  # nothing known about the key yet
    second = await _admit(limiter, headroom, auth, 2)
    assert second.overlapped
    assert (await second.confirm())["x-ratelimit-limit-requests"] == "100"
    assert second.decision_ms is not None and second.decision_ms >= 0
    assert await first.settle(5) and await second.settle(5)
    assert await _leases(limiter, auth) == 0


async def test_unlimited_key_always_overlaps() -> None:
    limiter, headroom = InMemoryRateLimiter(RateLimitConfig()), Headroom()
    gate = await _admit(limiter, headroom, _auth(), 1)
    assert gate.overlapped and await gate.settle(0)


async def test_near_the_limit_admissions_wait_and_stay_exact() -> None:
    """rpm=10, 30 requests started back to back: overlapping stops while room is below the margin
    (in-flight overlapped admissions count against it), and exactly 10 are granted."""
    limiter, headroom = InMemoryRateLimiter(RateLimitConfig()), Headroom(min_requests=4)
    auth = _auth(rpm=10)
    await (await _admit(limiter, headroom, auth, 0)).settle(1)  # learn the key's room: 9 left
    gates: list[AdmissionGate] = []
    refused_at_once = 0
    for n in range(1, 30):
        try:
            gates.append(await _admit(limiter, headroom, auth, n))
        except CrossLogicError as exc:  # decided before any engine work: refused right away
            assert exc.status_code == 429
            refused_at_once += 1
    overlapped = [g for g in gates if g.overlapped]
    # 9 left, margin 4: at most 6 overlapped starts before in-flight ones eat the margin.
    assert 1 <= len(overlapped) <= 6
    granted = 0
    for gate in gates:
        try:
            await gate.confirm()
            granted += 1
        except CrossLogicError as exc:
            assert exc.status_code == 429
    assert granted == 9  # + the learning request = the limit, never more
    settled = [await g.settle(1) for g in gates]
    assert settled.count(True) == 9
    assert await _leases(limiter, auth) == 0


async def test_refused_after_an_overlapped_start_leaves_nothing() -> None:
    """Another replica spends the quota between this replica's answer and its next request: the
    overlapped request is refused, `settle` says nothing was granted, and the key's room is forgotten."""
    limiter, headroom = InMemoryRateLimiter(RateLimitConfig()), Headroom()
    auth = _auth(rpm=8)
    await (await _admit(limiter, headroom, auth, 0)).settle(1)
    for _ in range(7):  # spend the rest straight through the limiter, as another replica would
        admission = await limiter.admit(_request(auth))
        assert admission.admitted
        await limiter.settle(admission, 1)
    gate = await _admit(limiter, headroom, auth, 9)
    assert gate.overlapped  # this replica still believes 7 are left
    with pytest.raises(CrossLogicError) as refused:
        await gate.confirm()
    assert refused.value.status_code == 429
    assert await gate.settle(0) is False
    assert await _leases(limiter, auth) == 0
    # The refusal taught it: the next request waits for its own admission (and is refused there).
    with pytest.raises(CrossLogicError):
        await _admit(limiter, headroom, auth, 10)


async def test_abandoned_while_deciding_still_releases_the_lease() -> None:
    """The client leaves while an overlapped admission is in flight: the decision completes and
    `settle` releases the lease it granted."""
    limiter, headroom = InMemoryRateLimiter(RateLimitConfig()), Headroom()
    auth = _auth(max_concurrency=5)
    await (await _admit(limiter, headroom, auth, 0)).settle(0)
    gate = await _admit(limiter, headroom, auth, 1)
    assert gate.overlapped and gate.decision_ms is None  # still deciding
    waiter = asyncio.create_task(gate.confirm())
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await gate.settle(0) is True
    assert await _leases(limiter, auth) == 0


def test_headroom_margins_per_limit() -> None:
    clock = [100.0]
    headroom = Headroom(fresh_s=2.0, min_requests=4, min_slots=2, clock=lambda: clock[0])
    auth = _auth(rpm=50, tpm=1000, max_concurrency=4)
    request = _request(auth, reserved=100)
    assert not headroom.allows(request)  # nothing known

    async def learn(limiter: InMemoryRateLimiter) -> None:
        admission = await limiter.admit(_request(auth, reserved=100))
        headroom.decided(request, admission, overlapped=False)

    limiter = InMemoryRateLimiter(RateLimitConfig())
    asyncio.run(learn(limiter))  # 49 requests, 900 tokens, 3 slots left
    assert headroom.allows(request)
    assert not headroom.allows(_request(auth, reserved=500))  # 900 < 2 x 500
    headroom.started(request)  # 2 slots left counting it
    assert headroom.allows(request)
    headroom.started(request)  # 1 slot left: below the margin
    assert not headroom.allows(request)
    headroom.decided(request, None, overlapped=True)  # limiter failed: forget the key
    assert not headroom.allows(request)
    asyncio.run(learn(limiter))
    assert not headroom.allows(request)  # 2 leases held + 1 overlapped start in flight: 1 slot left
    clock[0] += 2.5
    assert not headroom.allows(request)  # the answer went stale
