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
from collections.abc import Coroutine
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

    def _may_try_primary(self) -> bool:
        if self._down_until is None:
            return True
        if self._probing or time.monotonic() < self._down_until:
            return False
        self._probing = True
        return True

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
        if self._may_try_primary():
            try:
                admission = await self.primary.admit(request)
            except RateLimitBackendError as exc:
                self._primary_failed("admit", exc)
            else:
                self._primary_ok()
                return admission
            finally:
                self._probing = False
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
        if not self._may_try_primary():
            return Settlement(request_id=admission.request_id, ok=False)
        try:
            settlement = await self.primary.settle(admission, actual_tokens)
        except RateLimitBackendError as exc:
            self._primary_failed("settle", exc)
            return Settlement(request_id=admission.request_id, ok=False)
        finally:
            self._probing = False
        self._primary_ok()
        return settlement

    async def extend(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        if admission.backend == "local":
            return self.local.extend_now(admission, lease_ttl_s)
        if not self._may_try_primary():
            return False
        try:
            held = await self.primary.extend(admission, lease_ttl_s)
        except RateLimitBackendError as exc:
            self._primary_failed("extend", exc)
            return False
        finally:
            self._probing = False
        self._primary_ok()
        return held

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
