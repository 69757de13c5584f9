"""ASGI middleware that closes each inference request's `RequestObservation` when its response ends.

Outermost in the app (outside the request-id middleware), so every answer is counted with the status
the client got: refusals the handlers raise (401, 404, 429), the request-id middleware's own 400, an
unexpected exception (500) and a client gone before any response (499). A stream is closed when its
last chunk went out; its settlement (tokens, first token) ran just before, in the relay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crosslogic.telemetry.request_metrics import (
    CLIENT_CLOSED,
    STATE_KEY,
    RequestMetricsSink,
    RequestObservation,
)

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
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name == b"content-type":
                        observed.streamed = value.startswith(_EVENT_STREAM)
                        break
            await send(message)

        try:
            await self._app(scope, receive, send_observed)
        except BaseException as exc:
            if not status:
                status = CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500
            raise
        finally:
            try:
                self._sink.observe_request(observed.sample(status or CLIENT_CLOSED, time.monotonic()))
            except Exception:  # metrics must never turn into a failed request
                log.exception("could not record the metrics of a request")
