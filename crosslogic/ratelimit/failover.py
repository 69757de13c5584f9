"""What happens when the shared limiter state (Redis or the in-cluster actor) cannot be reached.

`fail_mode="open"` (the default): the replica keeps serving and enforces its share of every limit
(limit // replicas, at least 1) in local memory, so the total across replicas stays near the limit.
`fail_mode="closed"`: admissions fail with 503 `service_unavailable`.

A failure opens a breaker: for `probe_interval_s` requests go straight to the fail mode without touching
the backend (no request pays a timeout twice), then exactly one request probes it; success closes the
breaker and everything returns to the shared state. Admissions made locally settle locally.

Cancellation (a client disconnecting while we wait on Redis) must not leak: the backend call runs in a
shielded task; if the caller is cancelled during admission, a granted lease is released in the
background, and a settlement that was started always completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from crosslogic.errors import ServiceUnavailableError
from crosslogic.ratelimit.base import RateLimitBackendError, RateLimitConfig, RateLimiter
from crosslogic.ratelimit.memory import InMemoryRateLimiter
from crosslogic.ratelimit.metrics import NoopRateLimitMetrics, RateLimitMetrics
from crosslogic.ratelimit.models import Admission, AdmissionRequest, Settlement, Subject, SubjectState

logger = logging.getLogger(__name__)
T = TypeVar("T")


class FailoverRateLimiter(RateLimiter):
    def __init__(
        self,
        primary: RateLimiter,
        config: RateLimitConfig | None = None,
        metrics: RateLimitMetrics | None = None,
    ) -> None:
        self.config = config or RateLimitConfig()
        self.primary = primary
        self.local = InMemoryRateLimiter(self.config, backend_label="local")
        self.metrics: RateLimitMetrics = metrics or NoopRateLimitMetrics()
        self.backend_name = primary.backend_name
        self._down_until: float | None = None
        self._probing = False
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    async def _on_primary(
        self, operation: str, call: Callable[[], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """(True, result) from the primary, or (False, None) when it is down or just failed."""
        probe = False
        if self._down_until is not None:
            if self._probing or time.monotonic() < self._down_until:
                return False, None
            self._probing = probe = True
        try:
            result = await call()
        except RateLimitBackendError as exc:
            self._primary_failed(operation, exc)
            return False, None
        finally:
            if probe:
                self._probing = False
        self._primary_ok()
        return True, result

    def _primary_ok(self) -> None:
        if self._down_until is not None:
            logger.warning("rate limiter: %s reachable again, shared limits restored",
                           self.primary.backend_name)
            self.metrics.record_fail_mode(decision="recovered")
        self._down_until = None

    def _primary_failed(self, operation: str, exc: RateLimitBackendError) -> None:
        if self._down_until is None:
            logger.error("rate limiter: %s unreachable (%s); failing %s",
                         self.primary.backend_name, exc, self.config.fail_mode)
        self.metrics.record_backend_error(backend=self.primary.backend_name, operation=operation)
        self._down_until = time.monotonic() + self.config.probe_interval_s

    def _keep(self, future: asyncio.Future[Any]) -> None:
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    async def _shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coro)
        self._keep(task)
        return await asyncio.shield(task)

    async def admit(self, request: AdmissionRequest) -> Admission:
        task = asyncio.ensure_future(self._admit(request))
        self._keep(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, task: asyncio.Future[Admission]) -> None:
        """The caller was cancelled while its admission was being decided: give the slot back."""
        if task.cancelled() or task.exception() is not None:
            return
        admission = task.result()
        if admission.admitted:
            self._keep(asyncio.ensure_future(self._settle(admission, 0)))

    async def _admit(self, request: AdmissionRequest) -> Admission:
        ok, admission = await self._on_primary("admit", lambda: self.primary.admit(request))
        if ok and admission is not None:
            return admission
        self.metrics.record_fail_mode(decision=self.config.fail_mode)
        if self.config.fail_mode == "closed":
            raise ServiceUnavailableError(
                "Rate limiting is temporarily unavailable; please retry shortly.",
                headers={"retry-after": "1"},
            )
        return self.local.admit_now(self._local_share(request))

    def _local_share(self, request: AdmissionRequest) -> AdmissionRequest:
        replicas = self.config.replicas
        tenant = request.tenant.model_copy(update={"limits": request.tenant.limits.scaled_down(replicas)})
        key = request.key
        if key is not None:
            key = key.model_copy(update={"limits": key.limits.scaled_down(replicas)})
        return request.model_copy(update={"tenant": tenant, "key": key})

    async def settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        return await self._shielded(self._settle(admission, actual_tokens))

    async def _settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        if admission.backend == "local":
            return self.local.settle_now(admission, actual_tokens)
        # While the breaker is open the lease is left to expire: settle runs in a `finally` after the
        # response and must not wait on a dead backend.
        ok, settlement = await self._on_primary(
            "settle", lambda: self.primary.settle(admission, actual_tokens))
        if ok and settlement is not None:
            return settlement
        return Settlement(request_id=admission.request_id, ok=False)

    async def extend(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        if admission.backend == "local":
            return self.local.extend_now(admission, lease_ttl_s)
        ok, held = await self._on_primary("extend", lambda: self.primary.extend(admission, lease_ttl_s))
        return bool(ok and held)

    async def state(self, subject: Subject) -> SubjectState:
        try:
            return await self.primary.state(subject)
        except RateLimitBackendError as exc:
            self._primary_failed("state", exc)
            raise ServiceUnavailableError(
                f"Rate-limit state is unavailable: {self.primary.backend_name} unreachable."
            ) from exc

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.primary.close()
