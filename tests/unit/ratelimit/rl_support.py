"""Helpers shared by the rate-limiter tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from crosslogic.ratelimit import Admission, AdmissionRequest, RateLimiter, Subject

# `await make_limiter(window_s=...)` and `new_subjects(key=..., tenant=..., keys=n)` (see conftest).
LimiterFactory = Callable[..., Awaitable[RateLimiter]]
SubjectsFactory = Callable[..., tuple[Subject, list[Subject]]]


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def admission_request(
    tenant: Subject, key: Subject | None = None, *, tokens: int = 0, ttl: float = 30.0
) -> AdmissionRequest:
    return AdmissionRequest(
        request_id=new_request_id(), tenant=tenant, key=key, reserved_tokens=tokens,
        lease_ttl_s=ttl, model="test-model", key_prefix=key.id[:8] if key else None,
    )


async def admit(
    limiter: RateLimiter, tenant: Subject, key: Subject | None = None, *, tokens: int = 0,
    ttl: float = 30.0,
) -> Admission:
    return await limiter.admit(admission_request(tenant, key, tokens=tokens, ttl=ttl))


async def assert_usage(
    limiter: RateLimiter, subject: Subject, *, requests: int, tokens: int | None = None,
    leases: int | None = None,
) -> None:
    """The subject's live window holds exactly these figures."""
    state = await limiter.state(subject)
    assert state.requests_in_window == requests, state
    if tokens is not None:
        assert state.tokens_in_window == tokens, state
    if leases is not None:
        assert state.active_leases == leases, state
