"""Admission at the ingress: reserve against the key's and tenant's limits before any engine work.

Tokens are reserved at admission as (estimated prompt tokens + the request's max output tokens, or
what the engine would allow by default) and settled at completion to what the engine counted; the
concurrency lease is renewed while the request runs and released on every path (see `LeaseScope`).

The prompt estimate is deliberately high (one token per 3 characters + per-message overhead; token
id lists are counted exactly): an over-reservation is returned within the same request, while an
under-reservation would let a burst exceed the limit until it settles.
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from typing import Any

from crosslogic.auth.context import AuthContext
from crosslogic.engine.base import Endpoint
from crosslogic.ratelimit import LeaseScope, RateLimiter
from crosslogic.ratelimit.headers import rate_limit_error, rate_limit_headers
from crosslogic.ratelimit.subjects import admission_request_for

_CHARS_PER_TOKEN = 3
_MESSAGE_OVERHEAD = 8


def _text_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return math.ceil(len(value) / _CHARS_PER_TOKEN)
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_text_tokens(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_tokens(v) for v in value.values())
    return math.ceil(len(str(value)) / _CHARS_PER_TOKEN)


def estimate_prompt_tokens(endpoint: Endpoint, body: dict[str, Any]) -> int:
    if endpoint == "chat":
        messages = body.get("messages") or []
        tools = body.get("tools")
        return sum(_text_tokens(m) + _MESSAGE_OVERHEAD for m in messages) + _text_tokens(tools)
    if endpoint == "completions":
        return _text_tokens(body.get("prompt"))
    return _text_tokens(body.get("input"))


def reserved_tokens(endpoint: Endpoint, body: dict[str, Any], max_model_len: int) -> int:
    prompt = estimate_prompt_tokens(endpoint, body)
    if endpoint == "embeddings":
        return prompt
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    n = int(body.get("n") or 1)
    # Without max_tokens the engine may generate up to the rest of the context.
    output = int(requested) if requested else max(max_model_len - min(prompt, max_model_len), 1)
    return prompt + output * max(n, 1)


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
) -> Admitted:
    """Admit or raise the 429 (RateLimitError with retry-after headers)."""
    if limiter is None:
        return Admitted({}, None, None)
    request = admission_request_for(
        auth,
        request_id=request_id,
        reserved_tokens=reserved_tokens(endpoint, body, max_model_len),
        model=model,
        lease_ttl_s=lease_ttl_s,
    )
    admission = await limiter.admit(request)
    if not admission.admitted:
        raise rate_limit_error(admission)
    stack = AsyncExitStack()
    scope = await stack.enter_async_context(LeaseScope(limiter, admission))
    return Admitted(rate_limit_headers(admission), stack, scope)
