"""W3C Trace Context (`traceparent`, `tracestate`): read from a client's request, carried to engines.

A client's headers are untrusted input read before authentication: parsed here with bounded sizes and
no logging (OpenTelemetry's own propagator logs what it rejects, with the header's text), and a
malformed value is ignored, as the W3C specification asks: the request starts a trace of its own.

The carrier handed to an engine replica (`RoutingHints.trace_context`, a region's `GatewayRequest`)
is the same two headers as a plain dict of strings: any process, Ray or HTTP, can pass it on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    TraceFlags,
    TraceState,
    format_span_id,
    format_trace_id,
    set_span_in_context,
)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT_BYTES = TRACEPARENT.encode()
_TRACESTATE_BYTES = TRACESTATE.encode()
# W3C: a tracestate of 512 characters or less must be propagated, a longer one may be dropped.
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32
_MAX_TRACEPARENT = 512
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_KEY = r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER_RE = re.compile(f"({_KEY})=({_VALUE})")
_NO_STATE = TraceState()


def parse_traceparent(value: str) -> SpanContext | None:
    """The remote parent a `traceparent` names, or None for anything the specification rejects."""
    value = value.strip(" \t")
    if len(value) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return SpanContext(
        trace_id=int(trace_id, 16), span_id=int(span_id, 16), is_remote=True,
        trace_flags=TraceFlags(int(flags, 16) & TraceFlags.SAMPLED),
    )


def parse_tracestate(values: Iterable[str]) -> TraceState:
    """The members of one or more `tracestate` headers; empty when any is malformed or it is too long."""
    pairs: dict[str, str] = {}
    length = 0
    for header in values:
        length += len(header) + 1
        if length > MAX_TRACESTATE + 1:
            return _NO_STATE
        for member in header.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            match = _MEMBER_RE.fullmatch(member)
            if match is None or match.group(1) in pairs or len(pairs) == MAX_TRACESTATE_MEMBERS:
                return _NO_STATE
            pairs[match.group(1)] = match.group(2)
    return TraceState(list(pairs.items())) if pairs else _NO_STATE


def _parent(traceparent: str | None, tracestate: list[str]) -> Context:
    parent = parse_traceparent(traceparent) if traceparent is not None else None
    if parent is None:
        return Context()  # a trace of our own (never whatever happens to be current in this process)
    if tracestate:
        parent = SpanContext(parent.trace_id, parent.span_id, True, parent.trace_flags, parse_tracestate(tracestate))
    return set_span_in_context(NonRecordingSpan(parent), Context())


def context_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> Context:
    """The parent context of a request with these ASGI headers (an empty one without a valid parent)."""
    traceparent: str | None = None
    tracestate: list[str] = []
    for name, value in headers:
        if name == _TRACEPARENT_BYTES:
            if traceparent is not None:
                return Context()  # two traceparents: W3C says neither is to be trusted
            traceparent = value.decode("latin-1")
        elif name == _TRACESTATE_BYTES:
            tracestate.append(value.decode("latin-1"))
    return _parent(traceparent, tracestate)


def context_from_carrier(carrier: Mapping[str, str]) -> Context:
    """The parent context an ingress handed over (see `carrier`)."""
    state = carrier.get(TRACESTATE)
    return _parent(carrier.get(TRACEPARENT), [state] if state else [])


def carrier(span: Span) -> dict[str, str]:
    """`span` as the parent of whatever the receiver starts: its traceparent (and tracestate)."""
    ctx = span.get_span_context()
    out = {TRACEPARENT: f"00-{format_trace_id(ctx.trace_id)}-{format_span_id(ctx.span_id)}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        out[TRACESTATE] = ctx.trace_state.to_header()
    return out
