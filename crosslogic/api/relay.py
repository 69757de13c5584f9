"""Send a request to an engine and relay its answer: retry before the first token, then stream.

The first event decides the HTTP status: we wait for it before answering, so an engine failure or a
client mistake the engine detects (context length, bad parameters) gets its proper status code
instead of a 200 stream carrying an error. That wait costs nothing: the client waits for the first
token either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from crosslogic.api.gateway import Gateway
from crosslogic.api.timing import StageTimer
from crosslogic.engine.base import CHUNK, ERROR, RESPONSE, USAGE, Endpoint, EngineEvent
from crosslogic.errors import CrossLogicError, UpstreamError
from crosslogic.routing.hints import RoutingHints
from crosslogic.tracing.request_trace import NULL_TRACE, RequestTrace

logger = logging.getLogger(__name__)

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Closing an engine stream is quick (a cancel, a connection dropped). One that takes longer is stuck,
# and must hold neither the client's end of response nor the request's settlement hostage.
_CLOSE_ENGINE_STREAM_S = 5.0
# The last event of every OpenAI stream.
_SSE_DONE = "data: [DONE]\n\n"


class _ClosingStreamingResponse(StreamingResponse):
    """Closes the body iterator and settles on every exit, cancellation included.

    Starlette cancels the sending task when the client disconnects; if that lands in `send()`
    rather than inside our generator, the generator is left suspended and its `finally` (which
    settles the lease and writes usage) would only run whenever garbage collection finalises it.
    If the client is gone before the first chunk was pulled, the generator never started: closing
    it runs no `finally` at all, so `on_close` closes the engine stream and settles instead (both
    are idempotent; after a normal end they do nothing).
    """

    def __init__(
        self, content: AsyncIterator[str] | AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_or_disconnect() -> Message:
            # A transport that can no longer deliver messages (Ray Serve cancels the proxy's
            # receive task once the request ends) means the client is gone, not a server error.
            try:
                return await receive()
            except Exception:
                return {"type": "http.disconnect"}

        try:
            await super().__call__(scope, receive_or_disconnect, send)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(RuntimeError):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self._on_close()


class Outcome:
    """What happened to one request, for whoever settles it (rate limits, metering)."""

    __slots__ = (
        "completion_tokens",
        "finished_at",
        "first_token_at",
        "prompt_tokens",
        "region",
        "replica",
        "started_at",
        "status",
    )

    def __init__(self) -> None:
        self.status = "failed"
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.replica: str | None = None
        # The region that served it (None: never dispatched; the settle hook then uses the local one).
        self.region: str | None = None


Settle = Callable[[Outcome], Awaitable[None]]


async def _close_engine_stream(events: AsyncIterator[EngineEvent], request_id: str) -> None:
    """Close an engine stream (aborting its engine request if it still runs), within
    `_CLOSE_ENGINE_STREAM_S`: a stuck close is logged with the request's id and left behind."""
    try:
        async with asyncio.timeout(_CLOSE_ENGINE_STREAM_S):
            await events.aclose()  # type: ignore[attr-defined]
    except TimeoutError:
        logger.warning("closing the engine stream of request %s took over %.0fs: left behind",
                       request_id, _CLOSE_ENGINE_STREAM_S)
    except Exception:
        pass


async def _open(
    gateway: Gateway,
    model: str,
    endpoint: Endpoint,
    body: dict[str, Any],
    request_id: str,
    retries: int,
    outcome: Outcome,
    timer: StageTimer,
    preference: str | None = None,
    trace: RequestTrace = NULL_TRACE,
    session_key: str | None = None,
) -> tuple[EngineEvent, AsyncIterator[EngineEvent]]:
    excluded: set[str] = set()
    last_error: CrossLogicError | None = None
    for attempt in range(retries + 1):
        hints = RoutingHints(exclude=set(excluded), region_preference=preference, session_key=session_key)
        timer.dispatched()
        trace.dispatched(hints, attempt + 1)
        events = gateway.stream(model, endpoint, body, request_id, hints).__aiter__()
        try:
            first = await events.__anext__()
            timer.first_event(first[3] if first[0] == CHUNK and len(first) > 3 else None)
        except StopAsyncIteration:
            last_error = UpstreamError("The engine closed the request without answering.")
        except BaseException as exc:
            if not isinstance(exc, CrossLogicError) or not exc.retryable:
                trace.attempt_failed(exc)
                raise
            last_error = exc
        else:
            trace.first_event(first[0] == ERROR)
            retryable_engine_error = first[0] == ERROR and first[1].get("status", 500) >= 500
            if not retryable_engine_error or attempt == retries:
                outcome.replica, outcome.region = hints.chosen, hints.region
                return first, events
            last_error = UpstreamError(first[1]["error"]["message"], code=first[1]["error"].get("code"))
        trace.attempt_failed(last_error)
        await _close_engine_stream(events, request_id)
        if hints.chosen:
            excluded.add(hints.chosen)
        logger.warning("request %s failed before its first token (attempt %d): %r", request_id, attempt + 1, last_error)
    assert last_error is not None
    raise last_error


def _error_json(payload: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": payload["error"]}, status_code=int(payload.get("status", 502)), headers=headers)


def _record_usage(outcome: Outcome, usage: dict[str, int]) -> None:
    outcome.prompt_tokens = int(usage.get("prompt_tokens", 0))
    outcome.completion_tokens = int(usage.get("completion_tokens", 0))


async def relay(
    gateway: Gateway,
    model: str,
    endpoint: Endpoint,
    body: dict[str, Any],
    request_id: str,
    *,
    stream: bool,
    retries: int,
    settle: Settle | None = None,
    timer: StageTimer | None = None,
    confirm: Callable[[], Awaitable[dict[str, str]]] | None = None,
    region_preference: str | None = None,
    trace: RequestTrace = NULL_TRACE,
    session_key: str | None = None,
) -> JSONResponse | StreamingResponse:
    """`confirm`: awaited after the first event and before any answer; returns headers to add, or
    raises the error to answer with instead (the rate-limit admission, see crosslogic/api/admission.py).
    `region_preference`: the region the caller prefers (crosslogic/regions/preference.py).
    `session_key`: the client's session header, for session affinity (crosslogic/routing/policies.py).
    `trace`: the request's spans (crosslogic/tracing/request_trace.py)."""
    outcome = Outcome()
    timer = timer or StageTimer()
    settled = False

    async def finish() -> None:
        nonlocal settled
        if settled:
            return
        settled = True
        outcome.finished_at = time.monotonic()
        trace.finished(outcome)
        if settle is not None:
            # Settling releases leases and writes usage: it must finish even when the request's
            # task is being cancelled (client gone), so it runs shielded from that cancellation.
            await asyncio.shield(settle(outcome))

    try:
        first, events = await _open(
            gateway, model, endpoint, body, request_id, retries, outcome, timer, region_preference, trace,
            session_key=session_key,
        )
    except BaseException as exc:
        try:
            # The admission answers first, as when it is decided before the engine call: a refused
            # request gets its 429, not the engine's error (a client gone waits for nothing).
            if confirm is not None and not isinstance(exc, asyncio.CancelledError):
                await confirm()
        finally:
            await finish()
        raise
    headers: dict[str, str] = {}
    if confirm is not None:
        # Nothing reaches the client before the admission's answer (decided alongside the engine
        # call when the key has room): refused, the engine request is aborted and nothing is metered.
        try:
            headers = await confirm()
        except BaseException:
            await _close_engine_stream(events, request_id)
            await finish()
            raise
    # Where the time to this first event went (see crosslogic/api/timing.py).
    headers = {**headers, "server-timing": timer.header()}
    if outcome.region:
        # Where it ran, an engine's refusal included (a region answering errors is what to look for).
        headers = {**headers, "x-crosslogic-region": outcome.region}
    if first[0] == ERROR:
        await finish()
        return _error_json(first[1], headers)
    outcome.first_token_at = time.monotonic()
    trace.relaying(stream)
    if outcome.replica:
        # Which engine replica answered: for operators tracing a request, and for routing tests.
        headers = {**headers, "x-crosslogic-replica": outcome.replica}
    if not stream:
        try:
            return await _collect(first, events, outcome, headers)
        finally:
            await finish()

    async def close() -> None:
        """Close the engine stream and settle: from the body's `finally`, and from the response
        when the body never started (idempotent)."""
        await _close_engine_stream(events, request_id)
        await finish()

    return _ClosingStreamingResponse(
        _stream(first, events, outcome, close, request_id),
        close,
        media_type="text/event-stream",
        headers={**_SSE_HEADERS, **headers},
    )


async def _collect(
    first: EngineEvent, events: AsyncIterator[EngineEvent], outcome: Outcome, headers: dict[str, str] | None
) -> JSONResponse:
    body: dict[str, Any] | None = None
    event: EngineEvent | None = first
    while event is not None:
        kind, payload = event[0], event[1]
        if kind == RESPONSE:
            body = payload
        elif kind == USAGE:
            _record_usage(outcome, payload)
        elif kind == ERROR:
            return _error_json(payload, headers)
        event = await anext(events, None)
    if body is None:
        raise UpstreamError("The engine finished without a response.")
    if "usage" in body and not outcome.prompt_tokens:
        _record_usage(outcome, body["usage"] or {})
    outcome.status = "finished"
    return JSONResponse(body, headers=headers)


async def _stream(
    first: EngineEvent,
    events: AsyncIterator[EngineEvent],
    outcome: Outcome,
    close: Callable[[], Awaitable[None]],
    request_id: str,
) -> AsyncIterator[str]:
    outcome.status = "cancelled"  # until the stream ends normally
    try:
        event: EngineEvent | None = first
        while event is not None:
            kind, payload = event[0], event[1]
            if kind == CHUNK:
                if len(event) > 2 and event[2] is not None:
                    _record_usage(outcome, event[2])
                yield payload
                if payload.endswith(_SSE_DONE):
                    # The answer is complete: settle and end the response now rather than wait for
                    # the transport's end-of-stream, which a loaded Ray cluster was seen to deliver
                    # 120 s late (the engine call had finished; the client's stream hung open).
                    break
            elif kind == USAGE:
                _record_usage(outcome, payload)
            elif kind == ERROR:
                outcome.status = "failed"
                yield f"data: {json.dumps({'error': payload['error']})}\n\n"
                return
            event = await anext(events, None)
        outcome.status = "finished"
    except CrossLogicError as exc:
        # Headers are gone: the failure travels in the stream, as OpenAI does it.
        outcome.status = "failed"
        logger.warning("stream %s failed mid-way: %r", request_id, exc)
        yield f"data: {json.dumps(exc.body())}\n\n"
    finally:
        await close()
