"""How long to wait before retry number n: capped exponential backoff with jitter, and a server's
Retry-After honoured. The one schedule every retry loop of CrossLogic uses (loop restarts, alert
delivery, region heartbeats, Stripe meter events and webhooks), so they all behave alike.

    delay(n) = min(max_s, base_s * 2**(n-1)), of which a `jitter` fraction is drawn at random

`jitter=1.0` is "full jitter" (uniform in [0, step]): callers that retry against one shared remote
(every ingress replica's alert sink, every outbox row due at once) spread out instead of arriving in
waves. `0.5` keeps at least half the step (a crashing loop never restarts at once); `0` is a fixed
schedule (one region agent, whose operator reads the gaps from the log).

A server that says when to come back (HTTP `Retry-After`, in seconds or as an HTTP date) is waited
for at least that long, still within `max_s`: a receiver asking for a day must not park a retry
queue for a day.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

# Past 2**62 steps every real cap has been reached; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float
    max_s: float
    # Fraction of each step drawn at random: 1.0 full jitter, 0.0 none.
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.max_s > 0):
            raise ValueError(f"backoff needs base_s > 0 and max_s > 0 (got {self.base_s:g}, {self.max_s:g})")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter is a fraction in [0, 1] (got {self.jitter:g})")

    def step(self, attempt: int) -> float:
        """The un-jittered delay before retry `attempt` (1 = the first retry; lower counts as 1)."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return min(self.max_s, self.base_s * 2.0**exponent)

    def delay(self, attempt: int, *, retry_after_s: float | None = None,
              rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry `attempt`; at least `retry_after_s` (capped) when the server
        said. `rand`: a number in [0, 1) (tests pass their own)."""
        step = self.step(attempt)
        wait = step * (1.0 - self.jitter * rand())
        if retry_after_s is not None and retry_after_s > wait:
            wait = min(self.max_s, retry_after_s)
        return wait


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from an HTTP `Retry-After` value (delta-seconds or an HTTP date); None when absent or
    unreadable, 0 for a date already past."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": no zone said; an HTTP date is GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)
