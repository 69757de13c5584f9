"""`engine.generate`: the engine replica's span of one request, a child of the ingress's `engine.call`.

Wraps any `Engine.generate` event stream (crosslogic/engine/base.py), so it knows nothing of vLLM:
the span starts when the request reaches the replica, marks the first event (`first_token`, with
the engine's own time to it) and ends with the stream, carrying the tokens the engine counted. A
request that arrives without a trace context (tracing off at the ingress, or not sampled) is not
wrapped at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from opentelemetry.trace import Span, SpanKind, Tracer

from crosslogic.engine.base import CHUNK, ENGINE_FIRST_MS, ERROR, RESPONSE, USAGE, EngineEvent
from crosslogic.tracing import attributes as attr
from crosslogic.tracing.propagation import context_from_carrier

SPAN_NAME = "engine.generate"
_SSE_DONE = "data: [DONE]\n\n"


def traced_generate(
    tracer: Tracer,
    events: AsyncIterator[EngineEvent],
    trace_context: Mapping[str, str] | None,
    *,
    request_id: str,
    model: str,
    endpoint: str,
    replica: str,
) -> AsyncIterator[EngineEvent]:
    """`events`, inside a span when `trace_context` names a sampled parent; else `events` as is."""
    if not trace_context:
        return events
    span = tracer.start_span(
        SPAN_NAME, context=context_from_carrier(trace_context), kind=SpanKind.SERVER,
        attributes={
            attr.REQUEST_ID: request_id, attr.MODEL: model, attr.REPLICA: replica,
            attr.OPERATION: attr.OPERATIONS.get(endpoint, endpoint),
        },
    )
    if not span.is_recording():
        return events
    return _traced(span, events)


async def _traced(span: Span, events: AsyncIterator[EngineEvent]) -> AsyncIterator[EngineEvent]:
    usage: dict[str, Any] | None = None
    first = True
    outcome = "cancelled"  # until the stream ends, or fails
    try:
        async for event in events:
            kind = event[0]
            if first:
                first = False
                timing = event[3] if kind == CHUNK and len(event) > 3 and event[3] else {}
                first_ms = timing.get(ENGINE_FIRST_MS)
                span.add_event("first_token", {} if first_ms is None else {attr.ENGINE_FIRST_MS: float(first_ms)})
            if kind == CHUNK:
                if len(event) > 2 and event[2]:
                    usage = event[2]
                if event[1].endswith(_SSE_DONE):
                    # The answer is complete: the relay closes the stream here, before the usage event.
                    outcome = "finished"
            elif kind == USAGE:
                usage = event[1]
            elif kind == RESPONSE and isinstance(event[1].get("usage"), dict):
                usage = event[1]["usage"]
            elif kind == ERROR:
                outcome = "failed"
                error = event[1].get("error") or {}
                attr.mark_error(span, str(error.get("code") or "engine_error"))
            yield event
        if outcome != "failed":
            outcome = "finished"
    except BaseException as exc:
        # Closed or cancelled by the caller: "cancelled", unless the answer was already complete.
        if outcome != "finished" and not isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
            outcome = "failed"
            attr.mark_error(span, exc)
        raise
    finally:
        aclose = getattr(events, "aclose", None)
        try:
            if aclose is not None:
                await aclose()  # a close from our caller aborts the engine's request, as without us
        finally:
            span.set_attribute(attr.OUTCOME, outcome)
            if usage:
                span.set_attributes({
                    attr.INPUT_TOKENS: int(usage.get("prompt_tokens", 0)),
                    attr.OUTPUT_TOKENS: int(usage.get("completion_tokens", 0)),
                })
            span.end()
