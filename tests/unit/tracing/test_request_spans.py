"""A /v1 request's spans, exported over OTLP/HTTP to a strict receiver this test runs (tests/otlp_receiver.py).

The real /v1 app in-process over scripted engines (tests/unit/api/scripted_api.py: key authentication on
PostgreSQL, the in-memory rate limiter). The engines do what the serving layer does with a traced
request: the choice of replica is reported (`RoutingHints.routed`, as the Serve request router does)
and the events run through `traced_generate` with a tracer of the engine's own, from the carrier the
ingress put in the hints. The cross-process version is tests/serve/test_tracing_end_to_end.py.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from crosslogic.engine.base import ERROR, EngineEvent
from crosslogic.routing.hints import RoutingHints
from crosslogic.tracing.config import TracingConfig
from crosslogic.tracing.engine_span import traced_generate
from crosslogic.tracing.provider import Tracing, start_tracing
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.unit.api.scripted_api import ScriptedGateway, scripted_api

CHAT, REFUSING = "chat-m", "refusing-m"
PROMPT = "the launch code is SWORDFISH-7731"
ROUTE = "POST /v1/chat/completions"
STAGES = {ROUTE, "auth", "admission", "engine.call", "routing", "first_token", "stream", "settle"}


class TracedEngines(ScriptedGateway):
    """The scripted engines, treating a traced request as engine replicas do; `carriers`: what each
    call was handed. REFUSING answers with an engine's error event (a 400)."""

    def __init__(self, tracing: Tracing | None) -> None:
        super().__init__([CHAT, REFUSING], region="eu-test")
        self.tracing = tracing
        self.carriers: list[dict[str, str] | None] = []

    def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
               hints: RoutingHints) -> AsyncIterator[EngineEvent]:
        self.carriers.append(hints.trace_context)
        events = self._refusal() if model == REFUSING else super().stream(model, endpoint, body, request_id, hints)
        hints.routed(hints.chosen or "replica-0")  # as the request router reports the replica it chose
        if self.tracing is None:
            return events
        return traced_generate(self.tracing.tracer, events, hints.trace_context, request_id=request_id,
                               model=model, endpoint=endpoint, replica=hints.chosen or "")

    async def _refusal(self) -> AsyncIterator[EngineEvent]:
        yield (ERROR, {"error": {"message": "bad", "type": "invalid_request_error", "param": None,
                                 "code": "bad_parameter"}, "status": 400})


@dataclass
class Stack:
    client: httpx.AsyncClient
    secret: str
    tenant_id: str
    engines: TracedEngines
    ingress: Tracing | None
    receiver: OtlpReceiver

    def flush(self) -> None:
        for tracing in (self.ingress, self.engines.tracing):
            if tracing is not None:
                assert tracing.force_flush(10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.start()
    yield r
    r.stop()


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def config_for(receiver: OtlpReceiver, **overrides: Any) -> TracingConfig:
    return TracingConfig(enabled=True, endpoint=receiver.url, service_name="crosslogic-test", batch_delay_s=0.05,
                         **overrides)


@asynccontextmanager
async def traced_api(pool: asyncpg.Pool, receiver: OtlpReceiver, config: TracingConfig | None,
                     *, rpm: int | None = None) -> AsyncIterator[Stack]:
    """The app with `config`'s tracing (None: tracing off) in the ingress and in the engines."""
    ingress = start_tracing(config, "ingress") if config is not None else None
    engines = TracedEngines(start_tracing(config, "engine") if config is not None else None)
    try:
        async with scripted_api(pool, engines, rpm=rpm, retries_before_first_token=1,
                                tracer=ingress.tracer if ingress is not None else None) as api:
            yield Stack(api.client, api.secret, api.tenant_id, engines, ingress, receiver)
    finally:
        for tracing in (ingress, engines.tracing):
            if tracing is not None:
                tracing.shutdown()


@pytest.fixture
async def stack(db_pool: asyncpg.Pool, receiver: OtlpReceiver) -> AsyncIterator[Stack]:
    async with traced_api(db_pool, receiver, config_for(receiver), rpm=3) as s:
        yield s


def chat(model: str = CHAT, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 3, **fields}


def by_name(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def one(spans: dict[str, list[ReceivedSpan]], name: str) -> ReceivedSpan:
    assert len(spans.get(name, [])) == 1, (name, sorted(spans))
    return spans[name][0]


async def test_a_streamed_request_joins_the_clients_trace_down_to_the_engine(stack: Stack) -> None:
    header, trace_id, client_span = traceparent()
    headers = {"authorization": f"Bearer {stack.secret}", "traceparent": header, "tracestate": "vendor=abc,other=1"}
    async with stack.client.stream("POST", "/v1/chat/completions", json=chat(stream=True), headers=headers) as resp:
        assert resp.status_code == 200
        body = (await resp.aread()).decode()
    assert body.endswith("data: [DONE]\n\n")
    stack.flush()
    spans = by_name(stack.receiver.wait_for(lambda got: len([s for s in got if s.trace_id == trace_id]) >= 9))
    spans = by_name(stack.receiver.trace(trace_id))
    assert set(spans) == STAGES | {"engine.generate"}

    root = one(spans, ROUTE)
    assert (root.kind, root.parent_span_id) == ("SERVER", client_span)  # a child of the client's span
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["crosslogic.request_id"] == resp.headers["x-request-id"]
    assert root.attributes["crosslogic.tenant_id"] == stack.tenant_id
    assert root.attributes["gen_ai.request.model"] == CHAT and root.attributes["crosslogic.stream"] is True
    assert (root.attributes["gen_ai.usage.input_tokens"], root.attributes["gen_ai.usage.output_tokens"]) == (5, 3)
    assert root.resource["service.name"] == "crosslogic-test" and root.resource["crosslogic.component"] == "ingress"
    assert root.trace_state == "vendor=abc,other=1"  # the client's tracestate goes on with its trace

    for name in ("auth", "admission", "engine.call", "stream", "settle"):
        assert one(spans, name).parent_span_id == root.span_id, name
    call = one(spans, "engine.call")
    assert call.kind == "CLIENT" and call.attributes["crosslogic.attempt"] == 1
    assert (call.attributes["crosslogic.replica"], call.attributes["crosslogic.region"]) == ("replica-0", "eu-test")
    routing, first = one(spans, "routing"), one(spans, "first_token")
    assert routing.parent_span_id == first.parent_span_id == call.span_id
    assert routing.attributes["crosslogic.replica"] == "replica-0"
    assert routing.end_ns <= first.start_ns  # routing, then the wait for the engine's first token

    engine = one(spans, "engine.generate")
    assert engine.parent_span_id == call.span_id and engine.resource["crosslogic.component"] == "engine"
    assert engine.kind == "SERVER" and engine.attributes["crosslogic.request_id"] == resp.headers["x-request-id"]
    assert (engine.attributes["gen_ai.usage.input_tokens"], engine.attributes["gen_ai.usage.output_tokens"]) == (5, 3)
    assert [name for name, _ in engine.events] == ["first_token"]
    assert engine.attributes["crosslogic.outcome"] == "finished"
    assert stack.engines.carriers[-1] == {"traceparent": f"00-{trace_id}-{call.span_id}-01", "tracestate": "vendor=abc,other=1"}
    stream_span = one(spans, "stream")
    assert stream_span.attributes["crosslogic.outcome"] == "finished" and stream_span.end_ns <= one(spans, "settle").start_ns
    assert all(s.status != "ERROR" for s in stack.receiver.trace(trace_id))

    # Never the API key (nor its hash, nor the prompt), in any span, attribute, event or resource.
    for s in stack.receiver.spans():
        assert stack.secret not in s.text() and "SWORDFISH" not in s.text()
        assert stack.secret[:14] not in s.text()  # not even the key's lookup prefix
    assert stack.receiver.rejected == []


async def test_refusals_have_their_status_and_the_stage_that_refused(stack: Stack) -> None:
    headers = {"authorization": f"Bearer {stack.secret}"}
    traces: dict[str, str] = {}
    for case, body, auth in (
        ("plain", chat(), headers), ("bad_key", chat(), {"authorization": f"Bearer {stack.secret[:-4]}XXXX"}),
        ("engine_400", chat(REFUSING), headers), ("limited", chat(), headers), ("limited2", chat(), headers),
    ):
        header, trace_id, _ = traceparent()
        response = await stack.client.post("/v1/chat/completions", json=body, headers={**auth, "traceparent": header})
        traces[case] = trace_id
        traces[case + ":status"] = str(response.status_code)
    assert [traces[c + ":status"] for c in ("plain", "bad_key", "engine_400", "limited", "limited2")] == \
        ["200", "401", "400", "200", "429"]  # rpm=3: the fourth admitted request is refused
    stack.flush()
    stack.receiver.wait_for(lambda got: {traces[c] for c in ("plain", "bad_key", "engine_400", "limited2")}
                            <= {s.trace_id for s in got if s.name == ROUTE})

    plain = by_name(stack.receiver.trace(traces["plain"]))
    assert set(plain) == STAGES | {"engine.generate"}
    assert one(plain, "stream").attributes["crosslogic.stream"] is False  # the JSON answer's collection
    assert one(plain, ROUTE).attributes["gen_ai.usage.output_tokens"] == 3

    bad_key = by_name(stack.receiver.trace(traces["bad_key"]))
    assert set(bad_key) == {ROUTE, "auth"}  # nothing past authentication
    assert one(bad_key, ROUTE).attributes["http.response.status_code"] == 401
    assert one(bad_key, ROUTE).status == "UNSET"  # a client error is not the server span's error
    auth = one(bad_key, "auth")
    assert auth.status == "ERROR" and auth.attributes["crosslogic.error_code"] == "invalid_api_key"
    assert auth.attributes["error.type"] == "AuthenticationError"
    assert "crosslogic.tenant_id" not in one(bad_key, ROUTE).attributes

    refused = by_name(stack.receiver.trace(traces["engine_400"]))
    assert one(refused, ROUTE).attributes["http.response.status_code"] == 400
    assert one(refused, "engine.call").status == "ERROR" and one(refused, "first_token").status == "ERROR"
    assert one(refused, "engine.generate").attributes["crosslogic.error_code"] == "bad_parameter"
    assert "stream" not in refused  # nothing was relayed

    limited = by_name(stack.receiver.trace(traces["limited2"]))
    assert one(limited, ROUTE).attributes["http.response.status_code"] == 429
    admission = one(limited, "admission")
    assert admission.status == "ERROR" and admission.attributes["crosslogic.error_code"] == "rate_limit_exceeded"
    assert "engine.call" not in limited
    assert stack.receiver.rejected == []


async def test_a_retry_before_the_first_token_is_a_second_engine_call(stack: Stack) -> None:
    header, trace_id, _ = traceparent()
    stack.engines.fail_first = 1  # the first replica dies before its first event
    response = await stack.client.post("/v1/chat/completions", json=chat(),
                                       headers={"authorization": f"Bearer {stack.secret}", "traceparent": header})
    assert response.status_code == 200
    stack.flush()
    stack.receiver.wait_for(lambda got: any(s.trace_id == trace_id and s.name == ROUTE for s in got))
    spans = by_name(stack.receiver.trace(trace_id))
    calls = sorted(spans["engine.call"], key=lambda s: s.attributes["crosslogic.attempt"])
    assert [c.attributes["crosslogic.attempt"] for c in calls] == [1, 2]
    assert calls[0].status == "ERROR" and calls[0].attributes["error.type"] == "UpstreamError"
    assert [c.attributes["crosslogic.replica"] for c in calls] == ["replica-0", "replica-1"]
    assert calls[1].status == "UNSET"
    generated = sorted(spans["engine.generate"], key=lambda s: s.attributes["crosslogic.replica"])
    assert [g.parent_span_id for g in generated] == [c.span_id for c in calls]  # each under its own call
    assert generated[0].status == "ERROR" and generated[0].attributes["crosslogic.outcome"] == "failed"


async def post(stack: Stack, **headers: str) -> int:
    response = await stack.client.post("/v1/chat/completions", json=chat(),
                                       headers={"authorization": f"Bearer {stack.secret}", **headers})
    return response.status_code


async def test_sampling_and_malformed_traceparents(db_pool: asyncpg.Pool, receiver: OtlpReceiver) -> None:
    async with traced_api(db_pool, receiver, config_for(receiver, sample_ratio=0.0)) as stack:
        unsampled_header, unsampled, _ = traceparent(sampled=False)
        sampled_header, sampled, _ = traceparent()
        assert [await post(stack), await post(stack, traceparent=unsampled_header),
                await post(stack, traceparent=sampled_header)] == [200, 200, 200]
        stack.flush()
        spans = stack.receiver.wait_for(lambda got: any(s.trace_id == sampled for s in got))
        # Ratio 0: only the client's sampled trace is recorded; an unsampled one hands nothing to the engine.
        assert not [s for s in spans if s.trace_id == unsampled]
        assert stack.engines.carriers[:2] == [None, None] and stack.engines.carriers[2] is not None

    async with traced_api(db_pool, receiver, config_for(receiver, follow_client_sampling=False, sample_ratio=0.0)) as stack:
        assert await post(stack, traceparent=traceparent()[0]) == 200
        assert stack.engines.carriers == [None]  # the client's sampled flag is not believed

    async with traced_api(db_pool, receiver, config_for(receiver)) as stack:
        before = {s.trace_id for s in receiver.spans()}
        for bad in ("00-" + "0" * 32 + "-" + "1" * 16 + "-01", "garbage", "00-" + "a" * 32 + "-" + "b" * 16 + "-01-x",
                    "ff-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "A" * 32 + "-" + "b" * 16 + "-01", "x" * 5000):
            assert await post(stack, traceparent=bad) == 200, bad
        stack.flush()
        spans = receiver.wait_for(lambda got: len({s.trace_id for s in got if s.name == ROUTE} - before) >= 6)
        roots = [s for s in spans if s.name == ROUTE and s.trace_id not in before]
        assert len(roots) == 6 and all(r.parent_span_id is None for r in roots)  # each a trace of its own
        assert len({r.trace_id for r in roots}) == 6
    assert receiver.rejected == []


async def test_tracing_off_installs_nothing(db_pool: asyncpg.Pool, receiver: OtlpReceiver) -> None:
    async with traced_api(db_pool, receiver, None) as stack:
        header, trace_id, _ = traceparent()
        assert await post(stack, traceparent=header) == 200
        assert stack.engines.carriers == [None]  # nothing handed to the engine
        middleware = [m.cls.__name__ for m in stack.client._transport.app.user_middleware]  # type: ignore[attr-defined]
        assert "TracingMiddleware" not in middleware
        assert not receiver.trace(trace_id)
