"""One JSON line per /v1 request when it ends, on the `crosslogic.requests` logger.

Fields: request id (the server's), client request id, route, tenant id, key prefix (the public lookup
prefix, never the secret), model, region, HTTP status, outcome, prompt/completion tokens, TTFT and
total ms, stream or not, and the error code of a refused request. Nothing from the request's headers
or body goes in beside the client's request id, so a secret cannot leak into it.

A request ends on one of three paths, and exactly one of them writes the line (`_emitted` guards it):
- the settle hook ran (the relay reached an engine) and the response status is known: the line holds
  the engine's outcome; a stream's status (200) is known before it settles, a JSON answer's after;
- the client left before an answer (settled as cancelled): status 499, as proxies record it;
- an error was answered (a 4xx/429 before the engine, or a failure raised out of the relay): the
  error handlers call `error_answered`, with the outcome if the relay had settled one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.responses import Response

from crosslogic.api.relay import Outcome, Settle
from crosslogic.auth.context import AuthContext
from crosslogic.telemetry.response_watch import CLIENT_CLOSED

REQUEST_LOGGER = "crosslogic.requests"
_STATE_KEY = "request_log"

logger = logging.getLogger(REQUEST_LOGGER)
_errors = logging.getLogger(__name__)


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000.0, 3)


class RequestLog:
    """What one request's line will say, filled in as the request moves through the endpoint."""

    def __init__(self, request_id: str, client_request_id: str | None, route: str, region: str) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.route = route
        self.region = region
        self.started = time.monotonic()
        self.auth: AuthContext | None = None
        self.model: str | None = None
        self.stream = False
        self._status: int | None = None
        self._error_code: str | None = None
        self._outcome: Outcome | None = None
        self._emitted = False

    def settling(self, settle: Settle) -> Settle:
        """Wrap the settle hook: the outcome is noted after accounting, whatever accounting did."""
        async def run(outcome: Outcome) -> None:
            try:
                await settle(outcome)
            finally:
                self._outcome = outcome
                if self._status is not None or outcome.status == "cancelled":
                    self._emit()
        return run

    def answered(self, response: Response) -> None:
        """The endpoint returned a response (a stream settles later; a JSON answer already has)."""
        self._status = response.status_code
        if self._outcome is not None:
            self._emit()

    def error_answered(self, status: int, code: str | None) -> None:
        self._status, self._error_code = status, code
        self._emit()

    def fields(self) -> dict[str, Any]:
        outcome = self._outcome
        auth = self.auth
        return {
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "route": self.route,
            "tenant_id": str(auth.tenant_id) if auth else None,
            "key_prefix": auth.key_prefix if auth else None,
            "model": self.model,
            "region": (outcome.region if outcome else None) or self.region,
            "status": self._status if self._status is not None else CLIENT_CLOSED,
            "outcome": outcome.status if outcome else "refused",
            "error_code": self._error_code,
            "prompt_tokens": outcome.prompt_tokens if outcome else 0,
            "completion_tokens": outcome.completion_tokens if outcome else 0,
            "ttft_ms": _ms(self.started, outcome.first_token_at) if outcome else None,
            "total_ms": _ms(self.started, time.monotonic()),
            "stream": self.stream,
        }

    def _emit(self) -> None:
        if self._emitted:
            return
        self._emitted = True
        try:
            logger.info(json.dumps(self.fields(), separators=(",", ":")))
        except Exception:  # a log line must never fail the request
            _errors.exception("could not write the request log line of %s", self.request_id)


def begin(request: Request, request_id: str, client_request_id: str | None, route: str, region: str) -> RequestLog:
    entry = RequestLog(request_id, client_request_id, route, region)
    request.scope.setdefault("state", {})[_STATE_KEY] = entry
    return entry


Handler = Callable[[Request, Exception], Awaitable[Response]]


def logging_errors(handler: Handler) -> Handler:
    """Wrap an exception handler: a /v1 request answered with an error gets its line (once)."""
    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        entry = (request.scope.get("state") or {}).get(_STATE_KEY)
        if isinstance(entry, RequestLog):
            entry.error_answered(response.status_code, _error_code(response))
        return response
    return handle


def _error_code(response: Response) -> str | None:
    try:
        code = json.loads(bytes(response.body))["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None
