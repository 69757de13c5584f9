"""Telemetry hooks of the rate limiter. Core cannot import Ray, so it talks to this protocol; the
deployments layer backs it with `ray.util.metrics` (see `deployments/ratelimit_actor.py`)."""

from __future__ import annotations

import time
from typing import Protocol

from crosslogic.ratelimit.base import RateLimiter
from crosslogic.ratelimit.models import Admission, AdmissionRequest, Settlement, Subject, SubjectState


class RateLimitMetrics(Protocol):
    def record_decision(
        self, *, tenant_id: str, key_prefix: str, model: str, outcome: str, reason: str
    ) -> None:
        """outcome: admitted | rejected; reason: "" or rpm | tpm | concurrency."""

    def observe_latency(self, *, operation: str, backend: str, seconds: float) -> None:
        """operation: admit | settle | extend."""

    def set_active_leases(self, *, tenant_id: str, count: int) -> None: ...

    def record_backend_error(self, *, backend: str, operation: str) -> None: ...

    def record_fail_mode(self, *, decision: str) -> None:
        """decision: open (served by the local share) | closed (503) | recovered."""


class NoopRateLimitMetrics:
    def record_decision(
        self, *, tenant_id: str, key_prefix: str, model: str, outcome: str, reason: str
    ) -> None:
        return None

    def observe_latency(self, *, operation: str, backend: str, seconds: float) -> None:
        return None

    def set_active_leases(self, *, tenant_id: str, count: int) -> None:
        return None

    def record_backend_error(self, *, backend: str, operation: str) -> None:
        return None

    def record_fail_mode(self, *, decision: str) -> None:
        return None


class MeteredRateLimiter(RateLimiter):
    """Wraps any limiter to report decisions, latency and active leases."""

    def __init__(self, inner: RateLimiter, metrics: RateLimitMetrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.backend_name = inner.backend_name

    async def admit(self, request: AdmissionRequest) -> Admission:
        started = time.perf_counter()
        admission = await self.inner.admit(request)
        self.metrics.observe_latency(
            operation="admit", backend=admission.backend, seconds=time.perf_counter() - started)
        reason = admission.rejection.limit if admission.rejection else ""
        self.metrics.record_decision(
            tenant_id=admission.tenant_id, key_prefix=request.key_prefix or "",
            model=request.model or "", outcome="admitted" if admission.admitted else "rejected",
            reason=reason,
        )
        tenant = admission.tenant_status()
        if tenant is not None:
            self.metrics.set_active_leases(tenant_id=admission.tenant_id, count=tenant.active_leases)
        return admission

    async def settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        started = time.perf_counter()
        settlement = await self.inner.settle(admission, actual_tokens)
        self.metrics.observe_latency(
            operation="settle", backend=admission.backend, seconds=time.perf_counter() - started)
        if settlement.tenant_active_leases is not None:
            self.metrics.set_active_leases(
                tenant_id=admission.tenant_id, count=settlement.tenant_active_leases)
        return settlement

    async def extend(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        started = time.perf_counter()
        held = await self.inner.extend(admission, lease_ttl_s)
        self.metrics.observe_latency(
            operation="extend", backend=admission.backend, seconds=time.perf_counter() - started)
        return held

    async def state(self, subject: Subject) -> SubjectState:
        return await self.inner.state(subject)

    def status(self) -> tuple[bool, str]:
        return self.inner.status()

    async def close(self) -> None:
        await self.inner.close()
