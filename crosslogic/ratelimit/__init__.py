"""Exact rate limits per API key and per tenant: RPM, reserved TPM and concurrency leases.

Algorithm: sliding-window log
-----------------------------
Each subject (a key, or a tenant) with an RPM or TPM limit keeps a log of the requests admitted in the
last `window_s` (60 s): request id -> (admission time, tokens). A request is admitted at time `now` iff,
for the key and for its tenant,

    requests logged in (now - window, now]             + 1         <= rpm
    tokens of the requests logged in (now - window, now] + reserved <= tpm
    unexpired concurrency leases                        + 1         <= max_concurrency

and then it is logged (and leased) in both subjects, or in neither: one decision, all-or-nothing across
key and tenant and across the three limits, so a rejected request consumes nothing.

Precision: exact. In every interval of `window_s` seconds, measured on one clock (the Redis server's
TIME in µs, or the actor's monotonic clock), at most `rpm` requests and at most `tpm` tokens are
admitted, and a request is never refused while the window has room for it. There is no boundary effect
(a fixed window lets 2x through across its edge; a token bucket / GCRA with a burst of `rpm` lets up to
2x - 1 through in one window). The cost is memory: O(requests in the window) per limited subject;
subjects with neither RPM nor TPM keep no log.

Tokens: `reserved_tokens` (prompt + max output tokens) are logged at admission; `settle` replaces them
once with the actual count, so the unused part is returned to the window at once and nothing is
counted twice (a second settle is a no-op). A request settled after leaving the window changes nothing.

Concurrency: a lease per request and subject (a sorted set of request id -> expiry). `settle` removes
it; `extend` renews it during long streams; a lease whose replica died expires after its TTL.

Retry and reset times: a rejected RPM/TPM request gets the exact time until enough of the log expires
for it to fit; a concurrency rejection gets min(earliest lease expiry, 1 s), since slots usually free
by settlement. `reset_s` (x-ratelimit-reset-*) is the time until the oldest logged request leaves the
window, i.e. until quota next comes back. A request larger than a limit itself is rejected with no
retry time (`x-should-retry: false`).

Backends: `RedisRateLimiter` (shared by all replicas and clusters; one Lua script per call) and
`InMemoryRateLimiter` (one process: the in-cluster Ray actor, single cluster only, and the fail-open
fallback). `FailoverRateLimiter` chooses fail-open (default) or fail-closed while the shared backend is
unreachable; `MeteredRateLimiter` reports telemetry. `build_rate_limiter` wires the usual stack, and
`LeaseScope` is the try/finally (renew while running, settle on every path) around a request.
"""

from __future__ import annotations

from crosslogic.ratelimit.base import (
    FailMode,
    RateLimitBackendError,
    RateLimitConfig,
    RateLimiter,
)
from crosslogic.ratelimit.failover import FailoverRateLimiter
from crosslogic.ratelimit.headers import format_duration, rate_limit_error, rate_limit_headers
from crosslogic.ratelimit.memory import InMemoryRateLimiter
from crosslogic.ratelimit.metrics import MeteredRateLimiter, NoopRateLimitMetrics, RateLimitMetrics
from crosslogic.ratelimit.models import (
    Admission,
    AdmissionRequest,
    Limits,
    Rejection,
    Settlement,
    Subject,
    SubjectState,
    SubjectStatus,
    WindowStatus,
)
from crosslogic.ratelimit.scope import LeaseScope
from crosslogic.ratelimit.subjects import admission_request_for, key_subject, tenant_subject
from crosslogic.supervisor import LoopRestarts


def build_rate_limiter(
    config: RateLimitConfig,
    *,
    redis_url: str | None,
    in_cluster: RateLimiter | None = None,
    metrics: RateLimitMetrics | None = None,
    restarts: LoopRestarts | None = None,
) -> RateLimiter:
    """Redis when `redis_url` is set, else `in_cluster` (the actor client), behind fail mode and
    telemetry. Call `await limiter.close()` on shutdown."""
    # Imported here so processes that never talk to Redis do not load the client.
    from crosslogic.ratelimit.redis_backend import RedisRateLimiter

    metrics = metrics or NoopRateLimitMetrics()
    if redis_url:
        primary: RateLimiter = RedisRateLimiter.from_url(redis_url, config)
    elif in_cluster is not None:
        primary = in_cluster
    else:
        raise ValueError("build_rate_limiter needs a redis_url or an in-cluster limiter")
    return MeteredRateLimiter(FailoverRateLimiter(primary, config, metrics, restarts=restarts), metrics)


__all__ = [
    "Admission",
    "AdmissionRequest",
    "FailMode",
    "FailoverRateLimiter",
    "InMemoryRateLimiter",
    "LeaseScope",
    "Limits",
    "MeteredRateLimiter",
    "NoopRateLimitMetrics",
    "RateLimitBackendError",
    "RateLimitConfig",
    "RateLimitMetrics",
    "RateLimiter",
    "Rejection",
    "Settlement",
    "Subject",
    "SubjectState",
    "SubjectStatus",
    "WindowStatus",
    "admission_request_for",
    "build_rate_limiter",
    "format_duration",
    "key_subject",
    "rate_limit_error",
    "rate_limit_headers",
    "tenant_subject",
]
