"""In-cluster rate-limit state: one named Ray actor per cluster holding an `InMemoryRateLimiter`.

This is the backend when `REDIS_URL` is unset. It is correct across all ingress replicas of ONE Ray
cluster (every decision runs in the actor, one at a time); it is not shared across clusters, and an
actor restart forgets the current windows and leases (limits are then briefly lenient, never stricter).
`ActorRateLimiter` is the `RateLimiter` the ingress uses; it turns an unreachable actor into
`RateLimitBackendError` so `FailoverRateLimiter` applies the configured fail mode.

The calls travel over a persistent stream to the actor (`crosslogic/ratelimit/wire.py`: several times
cheaper than a Ray actor call, README "Why the defaults"); Ray actor calls carry them while the stream
is being (re)established, e.g. right after the actor restarted. The stream only serves callers that
prove its secret, which `stream_address` hands out with the address (`crosslogic/ratelimit/wire_protocol.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util import metrics as ray_metrics

from crosslogic.errors import CrossLogicError
from crosslogic.ratelimit import (
    Admission,
    AdmissionRequest,
    InMemoryRateLimiter,
    RateLimitBackendError,
    RateLimitConfig,
    RateLimiter,
    Settlement,
    Subject,
    SubjectState,
)
from crosslogic.ratelimit.wire import StreamEndpoint, WireClient, WireServer
from deployments.actor_calls import call_with_timeout
from deployments.loop_metrics import RayLoopRestarts
from deployments.named_actors import forget, named_actor

logger = logging.getLogger("ray.serve")

RATELIMIT_ACTOR_NAME = "crosslogic-ratelimit"
NAMESPACE = "crosslogic"
# A call to a live actor on the same cluster answers in about a millisecond; a dead one must fail fast.
ACTOR_CALL_TIMEOUT_S = 2.0
# After a failed attempt to open the stream, calls go through Ray for this long before the next one.
STREAM_RETRY_S = 1.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class RateLimitActor:
    """Async actor: methods run on one event loop and never await mid-decision, so each is atomic."""

    def __init__(self, config: RateLimitConfig) -> None:
        self._limiter = InMemoryRateLimiter(config, backend_label="actor")
        refused = ray_metrics.Counter(
            "crosslogic_ratelimit_stream_refused",
            description="Connections to the limiter's stream refused (failed or slow handshake, too many).",
            tag_keys=("reason",),
        )
        # A fresh secret per actor incarnation: a restart rotates it, and it travels only over Ray.
        self._wire = WireServer(
            self._limiter, max_connections=config.stream_max_connections,
            idle_timeout_s=config.stream_idle_timeout_s,
            on_refused=lambda reason: refused.inc(tags={"reason": reason}),
            restarts=RayLoopRestarts(),
        )

    async def stream_address(self) -> StreamEndpoint:
        """Where the stream is served (started on first ask, on this node's address, own event loop)
        and its secret: whoever can call this can call `admit` directly, so it widens no access."""
        await self._wire.start(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]  # unannotated in Ray
        return self._wire.endpoint

    async def admit(self, request: AdmissionRequest) -> Admission:
        return self._limiter.admit_now(request)

    async def settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        return self._limiter.settle_now(admission, actual_tokens)

    async def extend(self, admission: Admission, lease_ttl_s: float | None) -> bool:
        return self._limiter.extend_now(admission, lease_ttl_s)

    async def state(self, subject: Subject) -> SubjectState:
        return self._limiter.state_now(subject)

    async def ping(self) -> bool:
        return True


def get_ratelimit_actor(config: RateLimitConfig) -> Any:
    """The cluster's limiter actor, created by whichever replica asks first."""
    return named_actor(RateLimitActor, RATELIMIT_ACTOR_NAME, NAMESPACE, config)


class ActorRateLimiter(RateLimiter):
    backend_name = "actor"

    def __init__(
        self, config: RateLimitConfig, actor: Any = None, timeout_s: float = ACTOR_CALL_TIMEOUT_S,
        *, stream: bool = True,
    ) -> None:
        self._config = config
        self._actor = actor
        self._timeout_s = timeout_s
        self._stream_enabled = stream
        self._wire: WireClient | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._next_connect_at = 0.0

    @property
    def transport(self) -> str:
        """"stream" while calls go over the stream, else "ray" (actor calls)."""
        return "stream" if self._wire is not None and self._wire.connected else "ray"

    def status(self) -> tuple[bool, str]:
        how = "its stream" if self.transport == "stream" else "Ray actor calls"
        return True, f"in-cluster actor, over {how}"

    def _connect_soon(self) -> None:
        if not self._stream_enabled or time.monotonic() < self._next_connect_at:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        self._next_connect_at = time.monotonic() + STREAM_RETRY_S
        try:
            endpoint = await call_with_timeout(self._handle().stream_address.remote(), self._timeout_s)
            wire = await WireClient.connect(
                endpoint.host, endpoint.port, secret=endpoint.secret, timeout_s=self._timeout_s)
        except Exception as exc:  # actor restarting or gone: Ray calls meanwhile, retry later
            logger.info("rate-limit stream not available yet: %r", exc)
            return
        old, self._wire = self._wire, wire
        if old is not None:
            await old.close()

    def _handle(self) -> Any:
        # Resolved lazily and again after the actor died for good (e.g. killed by an operator):
        # `get_if_exists` then creates a fresh one, so the breaker's probe can recover.
        if self._actor is None:
            self._actor = get_ratelimit_actor(self._config)
        return self._actor

    async def _call(self, method: str, *args: Any) -> Any:
        wire = self._wire
        if wire is not None and wire.connected:
            # A lost stream fails this call (it may have been applied: never resent) with a
            # RateLimitBackendError, as a timed-out actor call does; the next calls use Ray.
            return await wire.call(method, *args)
        self._connect_soon()
        try:
            # The deadline stops the wait only: cancelling an actor call can wedge later ones (actor_calls).
            return await call_with_timeout(getattr(self._handle(), method).remote(*args), self._timeout_s)
        except RayTaskError as exc:
            # A client mistake raised in the actor (duplicate request id) keeps its OpenAI shape.
            if isinstance(exc.cause, CrossLogicError):
                raise exc.cause from None
            raise
        except RayActorError as exc:
            self._actor = None
            forget(RATELIMIT_ACTOR_NAME, NAMESPACE)
            raise RateLimitBackendError(f"rate-limit actor: {type(exc).__name__}: {exc}") from exc
        except (TimeoutError, GetTimeoutError) as exc:
            raise RateLimitBackendError(f"rate-limit actor: {type(exc).__name__}: {exc}") from exc

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """At replica start-up: create or find the actor and wait until it answers, so the first
        admissions do not spend their tight timeout on actor creation (and fail open)."""
        try:
            await call_with_timeout(self._handle().ping.remote(), timeout_s)
        except (TimeoutError, RayActorError, GetTimeoutError) as exc:
            raise RateLimitBackendError(f"rate-limit actor not ready: {exc}") from exc
        if self._stream_enabled:
            await self._connect()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._wire is not None:
            await self._wire.close()

    async def admit(self, request: AdmissionRequest) -> Admission:
        result: Admission = await self._call("admit", request)
        return result

    async def settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        if not admission.admitted:
            return Settlement(request_id=admission.request_id)
        result: Settlement = await self._call("settle", admission, actual_tokens)
        return result

    async def extend(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        return bool(await self._call("extend", admission, lease_ttl_s))

    async def state(self, subject: Subject) -> SubjectState:
        result: SubjectState = await self._call("state", subject)
        return result


# Seconds; the Redis admission is sub-millisecond, the actor hop about one millisecond.
_LATENCY_BOUNDARIES = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]


class RayRateLimitMetrics:
    """`RateLimitMetrics` on `ray.util.metrics`, exported to Prometheus by Ray (which prefixes `ray_`
    and suffixes counters with `_total`). Create one per process (inside a replica), never at import
    time."""

    def __init__(self, *, per_key_labels: bool = False) -> None:
        # One series per API key only when asked (AppConfig.metrics.per_key_labels): keys are many.
        self._per_key = per_key_labels
        self._decisions = ray_metrics.Counter(
            "crosslogic_ratelimit_decisions",
            description="Rate-limit admissions and rejections.",
            tag_keys=("tenant", *(("key_prefix",) if per_key_labels else ()), "model", "outcome", "reason"),
        )
        self._latency = ray_metrics.Histogram(
            "crosslogic_ratelimit_latency_seconds",
            description="Time spent in the rate limiter per call.",
            boundaries=_LATENCY_BOUNDARIES,
            tag_keys=("operation", "backend"),
        )
        self._leases = ray_metrics.Gauge(
            "crosslogic_ratelimit_active_leases",
            description="Concurrency leases held by a tenant, as last seen by this replica.",
            tag_keys=("tenant",),
        )
        self._errors = ray_metrics.Counter(
            "crosslogic_ratelimit_backend_errors",
            description="Rate-limit backend calls that failed (unreachable or timed out).",
            tag_keys=("backend", "operation"),
        )
        self._fail_mode = ray_metrics.Counter(
            "crosslogic_ratelimit_fail_mode_decisions",
            description="Decisions made while the shared backend was down (open, closed, recovered).",
            tag_keys=("decision",),
        )

    def record_decision(
        self, *, tenant_id: str, key_prefix: str, model: str, outcome: str, reason: str
    ) -> None:
        tags = {"tenant": tenant_id, "model": model, "outcome": outcome, "reason": reason}
        if self._per_key:
            tags["key_prefix"] = key_prefix
        self._decisions.inc(tags=tags)

    def observe_latency(self, *, operation: str, backend: str, seconds: float) -> None:
        self._latency.observe(seconds, tags={"operation": operation, "backend": backend})

    def set_active_leases(self, *, tenant_id: str, count: int) -> None:
        self._leases.set(count, tags={"tenant": tenant_id})

    def record_backend_error(self, *, backend: str, operation: str) -> None:
        self._errors.inc(tags={"backend": backend, "operation": operation})

    def record_fail_mode(self, *, decision: str) -> None:
        self._fail_mode.inc(tags={"decision": decision})
