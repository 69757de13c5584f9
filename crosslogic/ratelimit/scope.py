"""`LeaseScope`: the try/finally around an admitted request, so the ingress cannot get it wrong.

    admission = await limiter.admit(request)
    if not admission.admitted:
        raise rate_limit_error(admission)
    async with LeaseScope(limiter, admission) as scope:
        ...                                   # generate / stream
        scope.actual_tokens = usage.total     # whenever the count is known (also mid-stream)

While the body runs, the lease is renewed every third of its TTL, so long streams keep their slot and
a dead replica's slot frees within one TTL. On exit, on every path (success, engine error, client
disconnect, cancellation), the request is settled with `actual_tokens`; if the body never set it, the
whole reservation is kept (the safe direction: a limit may be briefly stricter, never exceeded).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from crosslogic.ratelimit.base import RateLimitBackendError, RateLimiter
from crosslogic.ratelimit.models import Admission, Settlement

logger = logging.getLogger(__name__)


class LeaseScope:
    def __init__(
        self, limiter: RateLimiter, admission: Admission, *, renew_every_s: float | None = None
    ) -> None:
        self.limiter = limiter
        self.admission = admission
        self.actual_tokens: int | None = None
        self.settlement: Settlement | None = None
        self._renew_every_s = renew_every_s or admission.lease_ttl_s / 3
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LeaseScope:
        if self.admission.admitted:
            self._renewer = asyncio.create_task(self._renew())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        tokens = self.admission.reserved_tokens if self.actual_tokens is None else self.actual_tokens
        # Shielded: a second cancellation while settling must not leave the lease behind.
        self.settlement = await asyncio.shield(self.limiter.settle(self.admission, tokens))

    async def _renew(self) -> None:
        warned = False
        while True:
            await asyncio.sleep(self._renew_every_s)
            try:
                held = await self.limiter.extend(self.admission)
            except RateLimitBackendError:
                held = False
            if not held and not warned:
                # The request goes on (it is being served); its slot may briefly be counted twice.
                logger.warning("rate limiter: lease of %s lost before renewal",
                               self.admission.request_id)
                warned = True
