"""The `RateLimiter` interface every backend implements, and the limiter's configuration.

Semantics shared by all backends (see `crosslogic.ratelimit` for the algorithm):

- `admit` is all-or-nothing across the key and its tenant and across RPM, TPM and concurrency: a
  rejected request consumes nothing. An admitted request is logged in the window of each subject with
  `reserved_tokens` and holds one concurrency lease per subject until `settle` or the lease TTL.
- `settle` is idempotent: it sets the request's tokens to the actual count (refunding the unused part
  of the reservation once) and releases the lease. It never raises for a backend outage: the ingress
  calls it in a `finally`, and an unreleased lease expires by itself.
- `extend` renews the lease of a long stream; it returns False when the lease had already expired.
"""

from __future__ import annotations

import abc
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crosslogic.ratelimit.models import (
    Admission,
    AdmissionRequest,
    BackendName,
    Settlement,
    Subject,
    SubjectState,
)

FailMode = Literal["open", "closed"]


class RateLimitBackendError(Exception):
    """The shared limiter state could not be reached in time (Redis down, actor dead, timeout)."""


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Length of the sliding window of RPM and TPM. 60 s in production; tests shorten it.
    window_s: float = Field(default=60.0, gt=0, le=3600)
    # Prefix of every Redis key: several deployments (or test runs) can share one Redis.
    namespace: str = Field(default="crosslogic:rl", min_length=1, pattern=r"^[A-Za-z0-9:_.-]+$")
    # Every Redis round trip is bounded by this; a slow Redis counts as a down Redis.
    redis_timeout_s: float = Field(default=0.25, gt=0, le=10)
    # Default is fail-open: a Redis outage must not take paying traffic down, and the per-replica
    # share of each limit (limit / replicas) still bounds the total across replicas.
    fail_mode: FailMode = "open"
    # Number of ingress replicas sharing the limits, used to compute the fail-open local share.
    replicas: int = Field(default=1, ge=1)
    # After a backend error, requests go straight to the fail mode for this long before one probes.
    probe_interval_s: float = Field(default=1.0, gt=0, le=60)
    # Bounds the limiter's memory per key and per tenant: at most this many requests in one window
    # (log entries) and this many concurrent leases. Limits below it stay exact; a larger limit acts
    # as this ceiling (refused as rpm/concurrency), never as a looser one.
    max_entries_per_subject: int = Field(default=200_000, ge=1, le=10_000_000)
    # The in-cluster limiter's stream (crosslogic/ratelimit/wire.py): connections beyond this are
    # closed at once; one without a frame for this long is closed (clients ping every third of it).
    stream_max_connections: int = Field(default=256, ge=1, le=65_536)
    stream_idle_timeout_s: float = Field(default=300.0, gt=0, le=86_400)


class RateLimiter(abc.ABC):
    """Admission control for one request; implementations must be safe to call concurrently."""

    # Set by each backend (a wrapper takes its inner limiter's).
    backend_name: BackendName

    @abc.abstractmethod
    async def admit(self, request: AdmissionRequest) -> Admission:
        """Decide atomically; returns a rejected `Admission` (never raises) when a limit is hit."""

    @abc.abstractmethod
    async def settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        """Record the actual tokens of an admitted request, refund the rest and release its lease."""

    @abc.abstractmethod
    async def extend(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        """Push the lease expiry to now + TTL (the admission's TTL when None)."""

    @abc.abstractmethod
    async def state(self, subject: Subject) -> SubjectState:
        """Live view of one subject for operators; `subject.limits` are the configured limits."""

    def status(self) -> tuple[bool, str]:
        """For /ready: whether admissions are being decided as configured, and how."""
        return True, self.backend_name

    async def close(self) -> None:  # noqa: B027  # a no-op by design: only some backends hold connections
        """Release connections; the default holds none."""
