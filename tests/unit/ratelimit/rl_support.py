"""Helpers shared by the rate-limiter tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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


@dataclass
class RecordingMetrics:
    """Records what the limiter reports (a sink for the metrics protocol)."""

    decisions: list[dict[str, str]] = field(default_factory=list)
    latencies: list[tuple[str, str, float]] = field(default_factory=list)
    leases: dict[str, int] = field(default_factory=dict)
    fail_mode: list[str] = field(default_factory=list)
    backend_errors: list[str] = field(default_factory=list)

    def record_decision(self, **labels: str) -> None:
        self.decisions.append(labels)

    def observe_latency(self, *, operation: str, backend: str, seconds: float) -> None:
        self.latencies.append((operation, backend, seconds))

    def set_active_leases(self, *, tenant_id: str, count: int) -> None:
        self.leases[tenant_id] = count

    def record_backend_error(self, *, backend: str, operation: str) -> None:
        self.backend_errors.append(operation)

    def record_fail_mode(self, *, decision: str) -> None:
        self.fail_mode.append(decision)
