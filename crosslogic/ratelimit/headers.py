"""OpenAI-style rate-limit headers and the 429 error.

Every response, streaming or not, carries `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for
the tighter of the key and the tenant. Durations use OpenAI's (Go's) format: `6m0s`, `1s`, `1.5s`,
`12ms`. Resets are rounded up to the millisecond so a client that waits exactly that long is not early.
"""

from __future__ import annotations

import math

from crosslogic.errors import RateLimitError
from crosslogic.ratelimit.models import Admission, Rejection, WindowStatus

_LIMIT_WORDS = {
    "rpm": "requests per minute (RPM)",
    "tpm": "tokens per minute (TPM)",
    "concurrency": "concurrent requests",
}


class TokenRateLimitError(RateLimitError):
    """OpenAI reports token-limit rejections with type "tokens", request-limit ones with "requests"."""

    error_type = "tokens"


def format_duration(seconds: float) -> str:
    """Go-style duration of `seconds` rounded up to whole milliseconds."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    """The x-ratelimit-* headers; a family is omitted when neither key nor tenant limits it."""
    headers: dict[str, str] = {}
    for family, window in (("requests", admission.requests), ("tokens", admission.tokens)):
        if window is not None:
            headers.update(_family(family, window))
    return headers


def _family(family: str, window: WindowStatus) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{family}": str(window.limit),
        f"x-ratelimit-remaining-{family}": str(window.remaining),
        f"x-ratelimit-reset-{family}": format_duration(window.reset_s),
    }


def rate_limit_error(admission: Admission) -> RateLimitError:
    """The 429 for a rejected admission, with retry-after (whole seconds, rounded up) and
    retry-after-ms, which the official `openai` client prefers and honours before retrying."""
    rejection = admission.rejection
    if rejection is None:
        raise ValueError("rate_limit_error() needs a rejected admission")
    headers = rate_limit_headers(admission)
    if rejection.retry_after_s is None:
        # Retrying cannot help: the request alone exceeds the limit. Tell clients not to retry.
        headers["x-should-retry"] = "false"
    else:
        retry_ms = max(1, math.ceil(rejection.retry_after_s * 1000))
        headers["retry-after"] = str(math.ceil(retry_ms / 1000))
        headers["retry-after-ms"] = str(retry_ms)
    error_class = TokenRateLimitError if rejection.limit == "tpm" else RateLimitError
    return error_class(rejection_message(rejection), headers=headers)


def rejection_message(rejection: Rejection) -> str:
    owner = "API key" if rejection.subject_kind == "key" else "organization"
    what = _LIMIT_WORDS[rejection.limit]
    if rejection.retry_after_s is None:
        return (
            f"Request too large for your {owner}: limit on {what} is {rejection.value}, "
            f"requested {rejection.requested}. Reduce the prompt or max_tokens, or ask for a "
            f"higher limit."
        )
    used = f"Limit {rejection.value}, requested {rejection.requested}."
    return (
        f"Rate limit reached for {what} on your {owner} ({rejection.subject_id}). {used} "
        f"Please try again in {format_duration(rejection.retry_after_s)}."
    )
