"""ASGI middleware that closes each inference request's `RequestObservation` when its response ends.

Outermost in the app (outside the request-id middleware), so every answer is counted with the status
the client got: refusals the handlers raise (401, 404, 429), the request-id middleware's own 400, an
unexpected exception (500) and a client gone before any response (499). A stream is closed when its
last chunk went out; its settlement (tokens, first token) ran just before, in the relay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from crosslogic.telemetry.request_metrics import STATE_KEY, RequestMetricsSink, RequestObservation
from crosslogic.telemetry.response_watch import WatchedResponse

log = logging.getLogger(__name__)

# The paths whose requests are observed: the OpenAI inference routes (bounded label values).
INFERENCE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_EVENT_STREAM = b"text/event-stream"


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, sink: RequestMetricsSink, routes: Collection[str] = INFERENCE_ROUTES) -> None:
        self._app = app
        self._sink = sink
        self._routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._routes or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        observed = RequestObservation(scope["path"])
        scope.setdefault("state", {})[STATE_KEY] = observed
        response = WatchedResponse()
        try:
            await response.run(self._app, scope, receive, send)
        finally:
            observed.streamed = (response.header(b"content-type") or b"").startswith(_EVENT_STREAM)
            try:
                self._sink.observe_request(observed.sample(response.final_status, time.monotonic()))
            except Exception:  # metrics must never turn into a failed request
                log.exception("could not record the metrics of a request")
