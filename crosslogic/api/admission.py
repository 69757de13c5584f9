"""Admission at the ingress: reserve against the key's and tenant's limits before anything reaches the
client; decided before the engine call, or alongside it when the key has room to spare (`headroom`).

Tokens are reserved at admission as (estimated prompt tokens + the request's max output tokens, or
what the engine would allow by default) and settled at completion to what the engine counted; the
concurrency lease is renewed while the request runs and released on every path (see `LeaseScope`).

The prompt estimate is deliberately high (one token per 3 characters + per-message overhead; token
id lists are counted exactly): an over-reservation is returned within the same request, while an
under-reservation would let a burst exceed the limit until it settles.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from crosslogic.api.headroom import Headroom
from crosslogic.auth.context import AuthContext
from crosslogic.engine.base import Endpoint
from crosslogic.errors import ContextLengthExceededError
from crosslogic.ratelimit import Admission, AdmissionRequest, LeaseScope, RateLimiter
from crosslogic.ratelimit.headers import rate_limit_error, rate_limit_headers
from crosslogic.ratelimit.subjects import admission_request_for

_CHARS_PER_TOKEN = 3
_MESSAGE_OVERHEAD = 8
# AdmissionRequest.reserved_tokens' bound (crosslogic/ratelimit/models.py).
MAX_RESERVED_TOKENS = 10**12


def _text_tokens(value: Any) -> int:
    # Iterative: a body may nest as deep as the JSON parser allows, past Python's recursion limit.
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        if isinstance(item, str):
            total += math.ceil(len(item) / _CHARS_PER_TOKEN)
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:
            total += math.ceil(len(str(item)) / _CHARS_PER_TOKEN)
    return total


def estimate_prompt_tokens(endpoint: Endpoint, body: dict[str, Any]) -> int:
    if endpoint == "chat":
        messages = body.get("messages") or []
        tools = body.get("tools")
        return sum(_text_tokens(m) + _MESSAGE_OVERHEAD for m in messages) + _text_tokens(tools)
    if endpoint == "responses":  # `input` holds a continued response's history too
        return sum(_text_tokens(body.get(field)) for field in ("input", "instructions", "tools"))
    if endpoint == "completions":
        return _text_tokens(body.get("prompt"))
    return _text_tokens(body.get("input"))


def check_output_budget(endpoint: Endpoint, body: dict[str, Any], max_model_len: int) -> None:
    """Refuse an output budget the model can never produce (400, param = the field), as OpenAI does:
    it would only reserve rate-limit tokens no request can use."""
    if endpoint == "embeddings":
        return
    for field in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        requested = body.get(field)
        if isinstance(requested, int) and requested > max_model_len:
            raise ContextLengthExceededError(
                f"{field} is too large: {requested}. This model's maximum context length is "
                f"{max_model_len} tokens, prompt included.",
                param=field,
            )


def reserved_tokens(endpoint: Endpoint, body: dict[str, Any], max_model_len: int) -> int:
    prompt = estimate_prompt_tokens(endpoint, body)
    if endpoint == "embeddings":
        return min(prompt, MAX_RESERVED_TOKENS)
    requested = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    n = int(body.get("n") or 1)
    # Without max_tokens the engine may generate up to the rest of the context.
    output = int(requested) if requested else max(max_model_len - min(prompt, max_model_len), 1)
    # Capped: the protocol and `check_output_budget` bound each factor, and the limiters' arithmetic
    # (Redis Lua numbers are doubles) must never see a number past the admission's own bound.
    return min(prompt + output * max(n, 1), MAX_RESERVED_TOKENS)


class Admitted:
    """An admitted request's lease: headers for the response, settle exactly once."""

    def __init__(self, headers: dict[str, str], stack: AsyncExitStack | None, scope: LeaseScope | None) -> None:
        self.headers = headers
        self._stack = stack
        self._scope = scope

    async def settle(self, actual_tokens: int) -> None:
        if self._stack is None:
            return
        if self._scope is not None:
            self._scope.actual_tokens = actual_tokens
        stack, self._stack = self._stack, None
        await stack.aclose()


class AdmissionGate:
    """One request's admission, decided before its engine call or alongside it (`overlapped`).

    `confirm` is what the relay awaits before anything reaches the client: the rate-limit headers, or
    the 429 the admission raised. `settle` (exactly once in effect, on every path) releases the lease
    of an admitted request and says whether there was one: a refused request is neither settled nor
    metered. An overlapped decision keeps running if the request is cancelled meanwhile, so a lease
    granted after the client left is still released by `settle`.
    """

    def __init__(self, decision: Admitted | asyncio.Future[Admitted], *, overlapped: bool = False) -> None:
        self.overlapped = overlapped
        self._decision: asyncio.Future[Admitted]
        if isinstance(decision, Admitted):
            self._decision = asyncio.get_running_loop().create_future()
            self._decision.set_result(decision)
        else:
            self._decision = decision
        self._started = time.perf_counter()
        # How long the overlapped admission took, for Server-Timing (its wait is what `admit` shows).
        self.decision_ms: float | None = None
        if overlapped:
            self._decision.add_done_callback(self._timed)

    def _timed(self, _: asyncio.Future[Admitted]) -> None:
        self.decision_ms = (time.perf_counter() - self._started) * 1000

    async def confirm(self) -> dict[str, str]:
        admitted = await asyncio.shield(self._decision)
        return admitted.headers

    def when_decided(self, callback: Callable[[BaseException | None], None]) -> None:
        """`callback(None)` once admitted, `callback(error)` once refused or failed (the admission's
        span, crosslogic/tracing): at once when already decided, else from the event loop."""
        def done(decision: asyncio.Future[Admitted]) -> None:
            callback(asyncio.CancelledError() if decision.cancelled() else decision.exception())

        if self._decision.done():
            done(self._decision)
        else:
            self._decision.add_done_callback(done)

    async def settle(self, actual_tokens: int) -> bool:
        try:
            admitted = await asyncio.shield(self._decision)
        except asyncio.CancelledError:
            if self._decision.cancelled():  # the decision itself (loop shutting down), not our caller
                return False
            raise
        except Exception:
            return False  # refused, or the limiter failed closed: nothing was granted
        await admitted.settle(actual_tokens)
        return True


async def _decide(
    limiter: RateLimiter, request: AdmissionRequest, headroom: Headroom | None, *, overlapped: bool
) -> Admitted:
    admission: Admission | None = None
    try:
        admission = await limiter.admit(request)
    finally:
        if headroom is not None:
            headroom.decided(request, admission, overlapped=overlapped)
    assert admission is not None
    if not admission.admitted:
        raise rate_limit_error(admission)
    stack = AsyncExitStack()
    scope = await stack.enter_async_context(LeaseScope(limiter, admission))
    return Admitted(rate_limit_headers(admission), stack, scope)


async def admit(
    limiter: RateLimiter | None,
    auth: AuthContext,
    *,
    request_id: str,
    endpoint: Endpoint,
    body: dict[str, Any],
    model: str,
    max_model_len: int,
    lease_ttl_s: float,
    headroom: Headroom | None = None,
) -> AdmissionGate:
    """Start the admission. With room to spare (`headroom`) it is decided alongside the engine call and
    this returns at once; otherwise it is decided here (raising the 429: RateLimitError with
    retry-after headers)."""
    check_output_budget(endpoint, body, max_model_len)
    if limiter is None:
        return AdmissionGate(Admitted({}, None, None))
    request = admission_request_for(
        auth,
        request_id=request_id,
        reserved_tokens=reserved_tokens(endpoint, body, max_model_len),
        model=model,
        lease_ttl_s=lease_ttl_s,
    )
    if headroom is not None and headroom.allows(request):
        headroom.started(request)
        task = asyncio.get_running_loop().create_task(_decide(limiter, request, headroom, overlapped=True))
        return AdmissionGate(task, overlapped=True)
    return AdmissionGate(await _decide(limiter, request, headroom, overlapped=False))
