"""The OpenAI API end to end: official `openai` client -> Serve proxy -> ingress -> router -> vLLM."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(serve_stack: ServeStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=serve_stack.api_key, max_retries=0) as c:
        yield c


def test_models_lists_what_is_served(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert ids == {CHAT_MODEL, EMBED_MODEL}
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_chat_completion_structure_and_usage(client: openai.OpenAI, chat_tokenizer: object) -> None:
    resp = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    assert resp.headers.get("x-request-id")
    completion = resp.parse()
    assert completion.object == "chat.completion"
    assert completion.model == CHAT_MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    prompt_ids = chat_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)  # type: ignore[attr-defined]
    if hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= completion.usage.completion_tokens <= 16
    if choice.finish_reason == "length":
        assert completion.usage.completion_tokens == 16
    answer_ids = chat_tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    # Re-tokenising decoded text can merge or split a token at the edges, never more.
    assert abs(len(answer_ids) - completion.usage.completion_tokens) <= 2


def test_chat_stream_with_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in {"stop", "length"}
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    assert chunks[-1].choices == []
    assert 1 <= usage_chunks[0].usage.completion_tokens <= 12  # type: ignore[union-attr]
    assert usage_chunks[0].usage.prompt_tokens > 0  # type: ignore[union-attr]


def test_stream_says_where_its_first_token_time_went(serve_stack: ServeStack, client: openai.OpenAI) -> None:
    """Server-Timing splits time to first token into our stages; the engine's part is measured in
    its replica, and the stages add up to no more than the total."""
    from crosslogic.api.timing import parse_server_timing

    with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=4, stream=True
    ) as resp:
        stages = parse_server_timing(resp.headers["server-timing"])
        assert list(resp.iter_lines())
    # admit_overlapped: the admission's own round trip when it ran alongside the engine call (on in
    # the suite's config; this key has no limits, so always): not a part of the total.
    assert set(stages) - {"admit_overlapped"} == {"auth", "body", "admit", "engine", "transit", "total"}, stages
    assert stages["engine"] > 0 and stages["transit"] > 0
    parts = sum(v for k, v in stages.items() if k not in {"total", "admit_overlapped"})
    assert parts <= stages["total"] + 0.05, stages
    # A non-streamed answer arrives whole: no split of the engine's time, but still the total.
    plain = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
    assert {"admit", "upstream", "total"} <= set(parse_server_timing(plain.headers["server-timing"]))


def test_chat_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=6, stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_completions_stream_and_not(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=CHAT_MODEL, prompt="The sky is", max_tokens=8, n=2, temperature=0.8, seed=7)
    assert completion.object == "text_completion"
    assert sorted(c.index for c in completion.choices) == [0, 1]
    assert completion.usage is not None and completion.usage.completion_tokens <= 16
    chunks = list(client.completions.create(model=CHAT_MODEL, prompt="The sky is", max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8


def test_stop_and_max_completion_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, max_completion_tokens=5, stop=["\n", "."], top_p=0.9, temperature=0.5, seed=1
    )
    assert completion.usage is not None and completion.usage.completion_tokens <= 5
    text = completion.choices[0].message.content or ""
    assert "\n" not in text and "." not in text


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 20}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Give a colour as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": schema, "strict": True}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    data = json.loads(choice.message.content or "")
    assert set(data) == {"colour"} and isinstance(data["colour"], str)


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=EMBED_MODEL, input=["hello world", "goodbye"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in result.data)
    assert result.usage.prompt_tokens > 0


def test_embeddings_answer_larger_than_a_grpc_message(client: openai.OpenAI) -> None:
    # 1,500 x 384 floats is ~5 MB as the engine's event: over gRPC's default 4 MiB message cap,
    # which the engine transport must lift (deployments/app_builder.py). As floats: the client's
    # default, base64, is 3 MB.
    inputs = [f"sentence number {i}" for i in range(1500)]
    result = client.embeddings.create(model=EMBED_MODEL, input=inputs, encoding_format="float")
    assert [d.index for d in result.data] == list(range(1500))
    assert all(len(d.embedding) == 384 for d in result.data)


def _error(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["code"], str)
    assert "Traceback" not in resp.text
    assert resp.headers.get("x-request-id")
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        ({"model": CHAT_MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_request", "messages.0.role"),
        ({"model": CHAT_MODEL}, 400, "invalid_request", "messages"),
        ({"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 0}, 400, "invalid_request", "max_tokens"),
        ({"model": "no-such-model", "messages": MESSAGES}, 404, "model_not_found", "model"),
        ({"model": EMBED_MODEL, "messages": MESSAGES}, 400, "model_not_supported", "model"),
        # Refused by the ingress (larger than the context itself), then by the engine (a prompt longer than it).
        ({"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 4000}, 400, "context_length_exceeded", "max_tokens"),
        ({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello " * 3000}], "max_tokens": 5}, 400,
         "context_length_exceeded", None),
    ],
)
def test_chat_errors(serve_stack: ServeStack, payload: object, status: int, code: str, param: str | None) -> None:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    resp = httpx.post(
        f"{serve_stack.openai_base}/chat/completions",
        content=content,
        headers={"content-type": "application/json", **serve_stack.auth_headers},
        timeout=60,
    )
    assert resp.status_code == status, resp.text
    error = _error(resp)
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_body_over_limit_is_413(serve_stack: ServeStack) -> None:
    big = json.dumps({"model": CHAT_MODEL, "prompt": "a" * (5 * 1024 * 1024)}).encode()
    resp = httpx.post(
        f"{serve_stack.openai_base}/completions",
        content=big,
        headers={"content-type": "application/json", **serve_stack.auth_headers},
        timeout=60,
    )
    assert resp.status_code == 413
    assert _error(resp)["code"] == "request_too_large"


def test_openai_client_sees_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=CHAT_MODEL, prompt="hi " * 3000, max_tokens=10)
    assert too_long.value.code == "context_length_exceeded"


def test_health_and_ready(serve_stack: ServeStack) -> None:
    assert httpx.get(f"{serve_stack.base_url}/health").json() == {"status": "ok"}
    ready = serve_stack.ready()
    assert ready["ready"] is True
    assert set(ready["dependencies"]) == {
        "router", f"engine:{CHAT_MODEL}", f"engine:{EMBED_MODEL}", "billing", "ratelimit", "regions",
        "postgres", "redis",
    }
    # Real round trips, not remembered states; billing's loops each finished an iteration lately.
    assert ready["dependencies"]["postgres"]["ok"] and ready["dependencies"]["postgres"]["detail"].startswith("SELECT 1 in")
    assert ready["dependencies"]["redis"]["ok"] and ready["dependencies"]["redis"]["detail"].startswith("PING in")
    billing = ready["dependencies"]["billing"]
    assert billing["ok"] and set(billing["data"]["loops"]) == {"billing-export", "billing-webhooks"}, billing
    assert ready["dependencies"]["regions"]["ok"] is True  # silent or drained regions never make it unready
    assert ready["dependencies"]["ratelimit"] == {"ok": True, "detail": "redis", "data": {}}
    assert len(serve_stack.engine_replicas()) == 2
    # The engine calls go over Serve's direct gRPC channel (ingress.engine_transport), as the
    # handles the requests use are set up: not Ray actor calls through the object store.
    chat = ready["dependencies"][f"engine:{CHAT_MODEL}"]["data"]
    assert chat["transport"] == "grpc", chat
