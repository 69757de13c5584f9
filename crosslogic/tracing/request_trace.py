"""One /v1 request's spans at the ingress, as the endpoint and the relay move through its stages.

```
POST /v1/chat/completions        SERVER, the root (the client's trace when it sent a traceparent)
├── auth                          the API key's authentication
├── admission                     the rate-limit decision (alongside the engine call when overlapped)
├── engine.call                   CLIENT, one per attempt: dispatch to the end of the engine's stream
│   ├── routing                   dispatch to the choice of replica or region (the replica accepted it)
│   ├── first_token               from that choice to the engine's first event
│   └── engine.generate           in the engine replica's process (crosslogic/tracing/engine_span.py)
├── stream                        the first event to the stream's end (the answer, when not streamed)
└── settle                        lease settled, usage recorded, request log written
```

`RequestTrace` itself is the null object: with tracing off, or a request not sampled, every call is
a method that does nothing, so the request path pays a handful of calls and no allocation.
`RecordingTrace` is the real one, made by `TracingMiddleware` (crosslogic/tracing/middleware.py).
Attributes are ids, names and counts only: never the API key, a header's value or the prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context

from crosslogic.routing.hints import RoutingHints
from crosslogic.tracing import attributes as attr
from crosslogic.tracing.propagation import carrier

STATE_KEY = "crosslogic_trace"
# An engine answered with an error event (its status and code are in the response, not here).
_ENGINE_ERROR = "engine_error"


class Stage(Protocol):
    def end(self, error: BaseException | None = None) -> None: ...


class Decision(Protocol):
    """The admission gate (crosslogic/api/admission.py): calls back once its decision is known."""

    overlapped: bool

    def when_decided(self, callback: Callable[[BaseException | None], None]) -> None: ...


class Outcome(Protocol):
    """What the relay learned of the request (crosslogic/api/relay.py Outcome)."""

    status: str
    prompt_tokens: int
    completion_tokens: int


class _NullStage:
    __slots__ = ()

    def end(self, error: BaseException | None = None) -> None:
        pass

    def __enter__(self) -> _NullStage:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        pass


NULL_STAGE = _NullStage()


class RequestTrace:
    """The null trace (see the module docstring); `RecordingTrace` overrides every method."""

    __slots__ = ()
    recording = False

    def stage(self, name: str) -> _NullStage | _SpanStage:
        """`with trace.stage("auth"):` a child span of the root, failed if the block raises."""
        return NULL_STAGE

    def start(self, name: str) -> Stage:
        """A child span of the root that the caller ends."""
        return NULL_STAGE

    def decided(self, stage: Stage, decision: Decision) -> None:
        """End `stage` when the admission is decided (at once unless it runs alongside the engine call)."""

    def identify(self, tenant_id: str, model: str, endpoint: str, stream: bool) -> None:
        """Root attributes, once the key and the model checked out."""

    def dispatched(self, hints: RoutingHints, attempt: int) -> None:
        """An engine call starts: its span's context goes along in `hints.trace_context`."""

    def first_event(self, error: bool) -> None:
        """The engine call's first event arrived (`error`: an engine's error event)."""

    def attempt_failed(self, error: BaseException) -> None:
        """The engine call failed before its first event (the relay may retry elsewhere)."""

    def relaying(self, stream: bool) -> None:
        """The answer starts going to the client."""

    def finished(self, outcome: Outcome) -> None:
        """The engine call and the relay are over (any path): tokens and outcome."""

    def settling(self, settle: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """`settle` in a span of its own."""
        return settle


NULL_TRACE = RequestTrace()


def request_trace(scope: Mapping[str, Any]) -> RequestTrace:
    """The request's trace (its ASGI scope's), or the null one."""
    state = scope.get("state")
    found = state.get(STATE_KEY) if state else None
    return found if found is not None else NULL_TRACE


class _SpanStage:
    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            attr.mark_error(self.span, error)
        self.span.end()

    def __enter__(self) -> _SpanStage:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.end(error)


class _Attempt:
    """One engine call's spans. `chosen` may run on Serve's router thread (it calls back from its own
    event loop when the replica accepted the request), the rest on the request's: hence the lock."""

    __slots__ = ("_ctx", "_dispatched_ns", "_first", "_hints", "_lock", "_routing", "_tracer", "span")

    def __init__(self, tracer: Tracer, parent: Context, number: int, hints: RoutingHints) -> None:
        self._tracer = tracer
        self._hints = hints
        self._dispatched_ns = time.time_ns()
        self.span = tracer.start_span(
            "engine.call", context=parent, kind=SpanKind.CLIENT, start_time=self._dispatched_ns,
            attributes={attr.ATTEMPT: number},
        )
        self._ctx = set_span_in_context(self.span, Context())
        self._lock = threading.Lock()
        self._routing: Span | None = tracer.start_span("routing", context=self._ctx, start_time=self._dispatched_ns)
        self._first: Span | None = None
        hints.trace_context = carrier(self.span)
        hints.on_chosen = self.chosen

    def chosen(self, placement: str) -> None:
        with self._lock:
            routing, self._routing = self._routing, None
            if routing is None:
                return
            now = time.time_ns()
            self._first = self._tracer.start_span("first_token", context=self._ctx, start_time=now)
        routing.set_attribute(attr.REPLICA, placement)
        routing.end(now)

    def first_event(self, error: bool) -> None:
        now = time.time_ns()
        with self._lock:
            routing, self._routing = self._routing, None
            first, self._first = self._first, None
        if routing is not None:  # no choice was reported: the whole wait, routing included
            routing.end(now)
            first = self._tracer.start_span("first_token", context=self._ctx, start_time=self._dispatched_ns)
        if first is not None:
            if error:
                attr.mark_error(first, _ENGINE_ERROR)
            first.end(now)
        if error:
            attr.mark_error(self.span, _ENGINE_ERROR)
        self._where()

    def end(self, error: BaseException | str | None = None) -> None:
        with self._lock:
            open_spans = [s for s in (self._routing, self._first) if s is not None]
            self._routing = self._first = None
        for span in open_spans:
            if error is not None:
                attr.mark_error(span, error)
            span.end()
        self._where()
        if error is not None:
            attr.mark_error(self.span, error)
        self.span.end()

    def _where(self) -> None:
        hints = self._hints
        if hints.chosen:
            self.span.set_attribute(attr.REPLICA, hints.chosen)
        if hints.region:
            self.span.set_attribute(attr.REGION, hints.region)


class RecordingTrace(RequestTrace):
    __slots__ = ("_attempt", "_closed", "_ctx", "_relay", "_tracer", "root")
    recording = True

    def __init__(self, tracer: Tracer, root: Span) -> None:
        self._tracer = tracer
        self.root = root
        self._ctx = set_span_in_context(root, Context())
        self._attempt: _Attempt | None = None
        self._relay: Span | None = None
        self._closed = False

    def stage(self, name: str) -> _SpanStage:
        return _SpanStage(self._tracer.start_span(name, context=self._ctx))

    def start(self, name: str) -> Stage:
        return self.stage(name)

    def decided(self, stage: Stage, decision: Decision) -> None:
        if isinstance(stage, _SpanStage):
            stage.span.set_attribute(attr.ADMISSION_OVERLAPPED, decision.overlapped)
        decision.when_decided(stage.end)

    def identify(self, tenant_id: str, model: str, endpoint: str, stream: bool) -> None:
        self.root.set_attributes({
            attr.TENANT_ID: tenant_id, attr.MODEL: model, attr.STREAM: stream,
            attr.OPERATION: attr.OPERATIONS.get(endpoint, endpoint),
        })

    def dispatched(self, hints: RoutingHints, attempt: int) -> None:
        self._end_attempt("superseded")
        self._attempt = _Attempt(self._tracer, self._ctx, attempt, hints)

    def first_event(self, error: bool) -> None:
        if self._attempt is not None:
            self._attempt.first_event(error)

    def attempt_failed(self, error: BaseException) -> None:
        self._end_attempt(error)

    def relaying(self, stream: bool) -> None:
        self._relay = self._tracer.start_span("stream", context=self._ctx, attributes={attr.STREAM: stream})

    def finished(self, outcome: Outcome) -> None:
        tokens = {attr.INPUT_TOKENS: outcome.prompt_tokens, attr.OUTPUT_TOKENS: outcome.completion_tokens}
        relay, self._relay = self._relay, None
        stream_failed = relay is not None and outcome.status == "failed"
        if relay is not None:
            relay.set_attributes({**tokens, attr.OUTCOME: outcome.status})
            if stream_failed:
                attr.mark_error(relay, "stream_failed")
            relay.end()
        self._end_attempt("stream_failed" if stream_failed else None)
        self.root.set_attributes({**tokens, attr.OUTCOME: outcome.status})

    def settling(self, settle: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def traced(outcome: Any) -> None:
            with self.stage("settle"):
                await settle(outcome)

        return traced

    def _end_attempt(self, error: BaseException | str | None) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.end(error)

    def close(self, status: int, request_id: str | None) -> None:
        """The response is over (middleware): whatever is still open ends with it."""
        if self._closed:
            return
        self._closed = True
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.end()
        self._end_attempt("cancelled" if status == 499 else None)
        root = self.root
        root.set_attribute(attr.HTTP_STATUS, status)
        if request_id is not None:
            root.set_attribute(attr.REQUEST_ID, request_id)
        if status >= 500:  # a client's mistake (4xx) is not the server span's error (HTTP conventions)
            root.set_attribute(attr.ERROR_TYPE, str(status))
            root.set_status(StatusCode.ERROR)
        root.end()
