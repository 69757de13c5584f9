"""ASGI middleware: one SERVER span per /v1 inference request, the root of its stages' spans.

Installed only when tracing is on (`build_api`), outermost, so the span covers every answer with the
status the client got and ends when a stream's last byte went out. A client's W3C `traceparent`
(and `tracestate`) makes the request's spans part of the client's trace. A request the sampler
drops gets the null trace: no span is recorded and nothing is handed to the engine.
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind, Tracer
from starlette.types import ASGIApp, Receive, Scope, Send

from crosslogic.telemetry.middleware import INFERENCE_ROUTES
from crosslogic.telemetry.response_watch import WatchedResponse
from crosslogic.tracing import attributes as attr
from crosslogic.tracing.propagation import context_from_headers
from crosslogic.tracing.request_trace import STATE_KEY, RecordingTrace

_REQUEST_ID = b"x-request-id"


class TracingMiddleware:
    def __init__(self, app: ASGIApp, *, tracer: Tracer) -> None:
        self._app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope.get("path")
        if route not in INFERENCE_ROUTES or scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)  # only the /v1 inference routes are traced
            return
        root = self._tracer.start_span(
            f"POST {route}", context=context_from_headers(scope["headers"]), kind=SpanKind.SERVER,
            attributes={attr.HTTP_METHOD: "POST", attr.HTTP_ROUTE: route},
        )
        if not root.is_recording():
            await self._app(scope, receive, send)
            return
        trace = RecordingTrace(self._tracer, root)
        scope.setdefault("state", {})[STATE_KEY] = trace
        response = WatchedResponse()
        try:
            await response.run(self._app, scope, receive, send)
        finally:
            request_id = response.header(_REQUEST_ID)  # the server's id (crosslogic/api/request_ids.py)
            trace.close(response.final_status, None if request_id is None else request_id.decode("latin-1"))
