"""A client's trace reaches the engine replica: the deployed stack exports over OTLP/HTTP to the session's
strict receiver (tests/otlp_receiver.py; `tracing:` in tests/serve/conftest.py, sample ratio 0, so only
requests sent with a sampled traceparent are traced).

One streamed chat with a traceparent: the ingress replica's spans (root, stages) and the engine
replica's `engine.generate` (another process, the real vLLM engine) arrive in the client's trace,
linked parent to child, naming the replica that answered; an untraced request exports nothing.
"""

from __future__ import annotations

import secrets
import time

import httpx

from tests.otlp_receiver import ReceivedSpan
from tests.serve.conftest import CHAT_MODEL, ServeStack

ROUTE = "POST /v1/chat/completions"
PROMPT = "Name three colours of the rainbow, PINEAPPLE-LANTERN."
INGRESS = {ROUTE, "auth", "admission", "engine.call", "routing", "first_token", "stream", "settle"}


def _chat(stack: ServeStack, **headers: str) -> httpx.Response:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{stack.openai_base}/chat/completions", json=body,
                      headers={**stack.auth_headers, **headers}, timeout=120) as response:
        response.read()
    assert response.status_code == 200, response.text
    assert response.text.rstrip().endswith("data: [DONE]")
    return response


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_the_clients_trace_reaches_the_engine_replica(serve_stack: ServeStack) -> None:
    receiver = serve_stack.otlp
    assert receiver is not None
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    traced = _chat(serve_stack, traceparent=f"00-{trace_id}-{client_span}-01", tracestate="client=t1")
    untraced = _chat(serve_stack)

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {s.name for s in spans if s.trace_id == trace_id} >= INGRESS | {"engine.generate"}

    receiver.wait_for(complete, timeout_s=60)
    spans = receiver.trace(trace_id)
    root = _one(spans, ROUTE)
    assert (root.kind, root.parent_span_id, root.trace_state) == ("SERVER", client_span, "client=t1")
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["crosslogic.request_id"] == traced.headers["x-request-id"]
    assert root.attributes["crosslogic.tenant_id"] == serve_stack.tenant_id
    assert root.attributes["gen_ai.request.model"] == CHAT_MODEL
    assert root.attributes["gen_ai.usage.output_tokens"] > 0 and root.attributes["gen_ai.usage.input_tokens"] > 0
    for name in ("auth", "admission", "engine.call", "stream", "settle"):
        assert _one(spans, name).parent_span_id == root.span_id, name

    replica = traced.headers["x-crosslogic-replica"]
    call = _one(spans, "engine.call")
    assert call.attributes["crosslogic.replica"] == replica
    routing = _one(spans, "routing")
    # The routing span ends when Serve's request router reports the replica it chose.
    assert routing.parent_span_id == call.span_id and routing.attributes["crosslogic.replica"] == replica
    assert _one(spans, "first_token").parent_span_id == call.span_id

    engine = _one(spans, "engine.generate")
    assert engine.parent_span_id == call.span_id  # a child of the ingress's span, from another process
    assert engine.resource["crosslogic.component"] == "engine" and root.resource["crosslogic.component"] == "ingress"
    assert engine.resource["service.instance.id"] != root.resource["service.instance.id"]
    assert engine.attributes["crosslogic.replica"] == replica
    assert engine.attributes["crosslogic.request_id"] == traced.headers["x-request-id"]
    assert engine.attributes["crosslogic.outcome"] == "finished"
    assert engine.attributes["gen_ai.usage.output_tokens"] == root.attributes["gen_ai.usage.output_tokens"]
    assert engine.events[0][0] == "first_token" and engine.events[0][1]["crosslogic.engine.first_ms"] > 0
    assert call.start_ns <= engine.start_ns and engine.end_ns <= root.end_ns  # one clock: the same machine

    # Ratio 0 and no traceparent: nothing of the other request, anywhere (a few batch intervals on).
    time.sleep(2.0)
    assert not [s for s in receiver.spans() if s.attributes.get("crosslogic.request_id") == untraced.headers["x-request-id"]]
    # Never the API key, nor the prompt, in anything exported this session.
    for s in receiver.spans():
        assert serve_stack.api_key not in s.text() and "PINEAPPLE" not in s.text()
    assert receiver.rejected == []
