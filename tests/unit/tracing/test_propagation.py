"""W3C Trace Context parsing of untrusted headers: what is joined, what starts a trace of its own."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.trace import get_current_span

from crosslogic.tracing.propagation import (
    MAX_TRACESTATE,
    context_from_carrier,
    context_from_headers,
    parse_traceparent,
    parse_tracestate,
)

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def parent_of(headers: list[tuple[bytes, bytes]]) -> tuple[int, int, int, str]:
    ctx = get_current_span(context_from_headers(headers)).get_span_context()
    return ctx.trace_id, ctx.span_id, int(ctx.trace_flags), ctx.trace_state.to_header() if ctx.trace_state else ""


def test_a_valid_traceparent_and_tracestate_are_joined() -> None:
    got = parent_of([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", b"congo=t61rcWkgMzE"),
                     (b"tracestate", b"rojo=00f067aa0ba902b7")])
    assert got == (int(TRACE, 16), int(SPAN, 16), 1, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    # A future version may append fields; unknown flag bits are dropped.
    future = parse_traceparent(f"cc-{TRACE}-{SPAN}-09-whatever")
    assert future is not None and future.trace_id == int(TRACE, 16) and int(future.trace_flags) == 1


@pytest.mark.parametrize("value", [
    "", "garbage", f"00-{TRACE}-{SPAN}", f"00-{TRACE}-{SPAN}-01-extra", f"ff-{TRACE}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-0g", "00-" + "a" * 600,
])
def test_a_malformed_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent(value) is None
    assert parent_of([(b"traceparent", value.encode())])[0] == 0  # no parent: a trace of our own


def test_two_traceparents_are_neither_believed() -> None:
    assert parent_of([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())] * 2)[0] == 0


def test_a_bad_tracestate_is_dropped_quietly_the_parent_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        for bad in ("UPPER=1", "a=1,a=2", "k=" + "v" * 300, ",".join(f"k{i}=v" for i in range(33)),
                    "a=" + "b" * MAX_TRACESTATE, "sk-cl-secret-key-text"):
            assert parse_tracestate([bad]).to_header() == ""
            got = parent_of([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", bad.encode())])
            assert got[:2] == (int(TRACE, 16), int(SPAN, 16)) and got[3] == ""
    assert "sk-cl-secret-key-text" not in caplog.text  # what a client sent is never logged


def test_the_engine_carrier_round_trips() -> None:
    ctx = get_current_span(context_from_carrier({"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "a=b"}))
    span = ctx.get_span_context()
    assert (span.trace_id, span.span_id, span.is_remote, span.trace_state.to_header()) == (int(TRACE, 16), int(SPAN, 16), True, "a=b")
    assert get_current_span(context_from_carrier({})).get_span_context().trace_id == 0
