"""One request's RED figures: collected while it runs, handed to a sink once when its response ends.

`RequestMetricsMiddleware` (crosslogic/telemetry/middleware.py) opens a `RequestObservation` per
inference request and closes it when the last byte is sent (a stream's end included), whatever the
status: a 401 or a 429 is counted as surely as a 200. The route handler fills in what only it learns:
`identify` (tenant, key, model: set only once the key and the model checked out, so a client cannot
mint label values), `gateway` (each routing attempt: local or a region, retries before the first
token) and `settled` (tokens and the first token's time, from the relay's `Outcome`).

The sink receives one `RequestSample`; the Ray side turns it into counters and histograms.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from crosslogic.routing.hints import RoutingHints
from crosslogic.telemetry.response_watch import CLIENT_CLOSED

if TYPE_CHECKING:
    from crosslogic.api.gateway import Gateway, Readiness
    from crosslogic.api.relay import Outcome
    from crosslogic.api.timing import StageTimer
    from crosslogic.auth.context import AuthContext
    from crosslogic.engine.base import Endpoint, EngineEvent, ModelCard

STATE_KEY = "crosslogic_observation"
# Label values for what the request never got to: no valid key, no known model, no engine.
UNKNOWN = "unknown"

# The `outcome` label: how the request ended, beside the status code the client got. A stream sends
# its 200 before the first token, so an engine failing after it is still a 200; only `stream_error`
# tells it from a stream that finished. Five values: the label's cardinality stays bounded.
FINISHED = "finished"
STREAM_ERROR = "stream_error"  # 200 sent, then the engine failed: the stream ended with an error event
CANCELLED = "cancelled"  # the client left (mid-stream, or 499 before any answer)
REFUSED = "refused"  # a 4xx answer: bad key, unknown model, invalid body, rate limit
FAILED = "failed"  # a 5xx answer: no engine, an engine failure before the first token
REMOTE_PREFIX = "region:"


@dataclass(slots=True, frozen=True)
class RoutingAttempt:
    placement: str  # "local" | "region"
    region: str  # where it was sent; UNKNOWN when nothing could be chosen


@dataclass(slots=True, frozen=True)
class RequestSample:
    route: str
    status: int
    model: str
    tenant: str
    key: str
    latency_s: float
    # Streams only: a non-streamed answer arrives whole, its first token is its end.
    ttft_s: float | None
    tpot_s: float | None
    prompt_tokens: int
    completion_tokens: int
    # Waiting for the rate-limit admission (the `admit` stage of crosslogic/api/timing.py).
    queue_wait_s: float | None
    attempts: tuple[RoutingAttempt, ...]
    outcome: str = FINISHED


class RequestMetricsSink(Protocol):
    def observe_request(self, sample: RequestSample) -> None:
        """Called once per request, on the request's task: must not block or raise."""
        ...


class NullRequestMetrics:
    def observe_request(self, sample: RequestSample) -> None:
        pass


class RequestObservation:
    __slots__ = ("hints", "key", "model", "outcome", "route", "started", "streamed", "tenant", "timer")

    def __init__(self, route: str) -> None:
        self.route = route
        self.started = time.monotonic()  # the relay's Outcome uses the same clock
        self.model = UNKNOWN
        self.tenant = UNKNOWN
        self.key = UNKNOWN
        self.timer: StageTimer | None = None
        self.outcome: Outcome | None = None
        self.hints: list[RoutingHints] = []
        self.streamed = False

    # -- filled in by the route handler ----------------------------------------------------------

    def identify(self, auth: AuthContext, model: str, timer: StageTimer) -> None:
        self.tenant, self.key, self.model, self.timer = str(auth.tenant_id), auth.key_prefix, model, timer

    def gateway(self, gateway: Gateway) -> Gateway:
        return _ObservedGateway(gateway, self.hints)

    def settled(self, settle: Callable[[Outcome], Awaitable[None]]) -> Callable[[Outcome], Awaitable[None]]:
        async def observed(outcome: Outcome) -> None:
            self.outcome = outcome
            await settle(outcome)

        return observed

    # -- closed by the middleware ----------------------------------------------------------------

    def sample(self, status: int, ended: float) -> RequestSample:
        outcome = self.outcome
        ttft = tpot = None
        prompt = completion = 0
        if outcome is not None:
            prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
            first = outcome.first_token_at
            if self.streamed and first is not None:
                ttft = first - self.started
                if completion > 1 and outcome.finished_at is not None:
                    tpot = (outcome.finished_at - first) / (completion - 1)
        admit_ms = self.timer.stages.get("admit") if self.timer is not None else None
        attempts = tuple(
            RoutingAttempt(
                "region" if (h.chosen or "").startswith(REMOTE_PREFIX) else "local", h.region or UNKNOWN
            )
            for h in self.hints
        )
        return RequestSample(
            route=self.route, status=status, model=self.model, tenant=self.tenant, key=self.key,
            latency_s=ended - self.started, ttft_s=ttft, tpot_s=tpot, prompt_tokens=prompt,
            completion_tokens=completion, queue_wait_s=None if admit_ms is None else admit_ms / 1000.0,
            attempts=attempts, outcome=self._outcome(status),
        )

    def _outcome(self, status: int) -> str:
        settled = self.outcome.status if self.outcome is not None else None
        if status == CLIENT_CLOSED or settled == "cancelled":
            return CANCELLED
        if status >= 500:
            return FAILED
        if status >= 400:
            return REFUSED
        return STREAM_ERROR if settled == "failed" else FINISHED


class _ObservedGateway:
    """Keeps each attempt's `RoutingHints` (the gateway writes where it sent the request into them);
    the events themselves pass through untouched, at no cost per token."""

    __slots__ = ("_hints", "_inner")

    def __init__(self, inner: Gateway, hints: list[RoutingHints]) -> None:
        self._inner = inner
        self._hints = hints

    def models(self) -> list[ModelCard]:
        return self._inner.models()

    def stream(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints
    ) -> AsyncIterator[EngineEvent]:
        self._hints.append(hints)
        return self._inner.stream(model, endpoint, body, request_id, hints)

    async def readiness(self) -> Readiness:
        return await self._inner.readiness()


def observation(scope: MutableMapping[str, Any]) -> RequestObservation:
    """The request's observation (its ASGI scope's), or a detached one when the app runs without
    the middleware (then nothing reads what is filled in)."""
    state = scope.get("state")
    found = state.get(STATE_KEY) if state else None
    return found if found is not None else RequestObservation("")
