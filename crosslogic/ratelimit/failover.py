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

A call that times out may still have run on the server (the reply was late, not lost; on a saturated
2-core machine the ingress's own event loop is what makes it late). So nothing the primary did not
confirm is dropped: a settlement that failed, or came while the breaker was open, is retried in the
background until the primary confirms it; an admission that failed is compensated there too (settled
to 0 tokens: its lease and reservation go, if it ran at all; its request stays counted, the safe
direction). The scripts are idempotent per request id, so a retry never counts twice. Retries stop
after `window_s + lease_ttl_s`, when everything they would undo has expired on its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from crosslogic.errors import ServiceUnavailableError
from crosslogic.ratelimit.base import RateLimitBackendError, RateLimitConfig, RateLimiter
from crosslogic.ratelimit.memory import InMemoryRateLimiter
from crosslogic.ratelimit.metrics import NoopRateLimitMetrics, RateLimitMetrics
from crosslogic.ratelimit.models import Admission, AdmissionRequest, Settlement, Subject, SubjectState
from crosslogic.supervisor import LoopRestarts, supervise

logger = logging.getLogger(__name__)
T = TypeVar("T")
# First retry of an unconfirmed settlement: soon, since a late reply is the usual cause.
_RETRY_FIRST_S = 0.1


class FailoverRateLimiter(RateLimiter):
    def __init__(
        self,
        primary: RateLimiter,
        config: RateLimitConfig | None = None,
        metrics: RateLimitMetrics | None = None,
        *,
        restarts: LoopRestarts | None = None,
    ) -> None:
        self.config = config or RateLimitConfig()
        self._restarts = restarts
        self.primary = primary
        self.local = InMemoryRateLimiter(self.config, backend_label="local")
        self.metrics: RateLimitMetrics = metrics or NoopRateLimitMetrics()
        self.backend_name = primary.backend_name
        self._down_until: float | None = None
        self._probing = False
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._background: set[asyncio.Future[Any]] = set()
        # request id -> (admission, tokens, give-up time): settlements the primary has not confirmed.
        self._unsettled: dict[str, tuple[Admission, int, float]] = {}
        self._retrier: asyncio.Task[None] | None = None

    @property
    def unsettled(self) -> int:
        """Settlements waiting for the primary to confirm them (for tests and metrics)."""
        return len(self._unsettled)

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    def status(self) -> tuple[bool, str]:
        ok, detail = self.primary.status()
        if not self.degraded:
            return ok, detail
        # Fail-open keeps admitting (each replica its share); fail-closed answers 503 meanwhile.
        return self.config.fail_mode == "open", f"{detail}: unreachable, failing {self.config.fail_mode}"

    async def _on_primary(
        self, operation: str, call: Callable[[], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """(True, result) from the primary, or (False, None) when it is down or just failed."""
        outcome, result = await self._try_primary(operation, call)
        return outcome == "ok", result

    async def _try_primary(
        self, operation: str, call: Callable[[], Awaitable[T]]
    ) -> tuple[str, T | None]:
        """("ok", result); ("skipped", None) with the breaker open (nothing sent); ("failed", None)
        when the call was sent and failed (it may still have run on the server)."""
        probe = False
        if self._down_until is not None:
            if self._probing or time.monotonic() < self._down_until:
                return "skipped", None
            self._probing = probe = True
        try:
            result = await call()
        except RateLimitBackendError as exc:
            self._primary_failed(operation, exc)
            return "failed", None
        finally:
            if probe:
                self._probing = False
        self._primary_ok()
        return "ok", result

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
        outcome, admission = await self._try_primary("admit", lambda: self.primary.admit(request))
        if outcome == "ok" and admission is not None:
            return admission
        if outcome == "failed":
            # Possibly admitted there after all: undo it once the primary answers again.
            self._retry_settle(self._phantom(request), 0)
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
        self._retry_settle(admission, actual_tokens)
        return Settlement(request_id=admission.request_id, ok=False)

    def _phantom(self, request: AdmissionRequest) -> Admission:
        """The admission the primary may have granted for `request` without our hearing of it."""
        return Admission(
            request_id=request.request_id, tenant_id=request.tenant.tenant_id,
            key_id=request.key.id if request.key else None, admitted=True,
            reserved_tokens=request.reserved_tokens, lease_ttl_s=request.lease_ttl_s,
            backend=self.primary.backend_name,
        )

    def _retry_settle(self, admission: Admission, actual_tokens: int) -> None:
        give_up_at = time.monotonic() + self.config.window_s + admission.lease_ttl_s
        self._unsettled[admission.request_id] = (admission, actual_tokens, give_up_at)
        if self._retrier is None or self._retrier.done():
            # Ends by itself once nothing is unsettled; a crash is restarted (the rows are in self).
            self._retrier = asyncio.get_running_loop().create_task(supervise(
                "ratelimit_settle_retry", self._retry_unsettled, restarts=self._restarts,
                backoff_base_s=self.config.probe_interval_s, finished_on_return=True))

    async def _retry_unsettled(self) -> None:
        delay = _RETRY_FIRST_S
        while self._unsettled:
            await asyncio.sleep(delay)
            delay = self.config.probe_interval_s
            for request_id, (admission, tokens, give_up_at) in list(self._unsettled.items()):
                if time.monotonic() > give_up_at:
                    self._unsettled.pop(request_id, None)
                    continue
                ok, _ = await self._on_primary("settle", functools.partial(self.primary.settle, admission, tokens))
                if not ok:
                    break  # still unreachable: the whole batch waits for the next round
                self._unsettled.pop(request_id, None)
                delay = _RETRY_FIRST_S

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
        if self._retrier is not None:
            self._retrier.cancel()
            await asyncio.gather(self._retrier, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.primary.close()
