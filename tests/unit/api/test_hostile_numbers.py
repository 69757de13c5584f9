"""Hostile numbers, bodies and strings get a 400 in OpenAI's shape at the API, never a 500.

The whole /v1 app (`build_api`) with the real key authenticator on PostgreSQL and the real in-memory
rate limiter; every case here is refused before an engine is asked, so the gateway only lists models
and fails the test if a request reaches it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
import pytest

from crosslogic.api.admission import MAX_RESERVED_TOKENS, reserved_tokens
from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.api.gateway import Readiness
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.engine.base import EngineEvent, ModelCard
from crosslogic.errors import InvalidRequestError
from crosslogic.metering import UsageRecorder
from crosslogic.metering.reports import UsageQuery, usage_report
from crosslogic.ratelimit import InMemoryRateLimiter, RateLimitConfig
from crosslogic.routing.hints import RoutingHints
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant

CHAT, EMBED, CONTEXT = "chat-m", "embed-m", 2048
BASE = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
PROMPT = {"model": CHAT, "prompt": "Hi", "max_tokens": 2}
EMBEDDING = {"model": EMBED, "input": "Hi"}


class ModelsOnlyGateway:
    """Lists two models; no request in these tests may get as far as an engine."""

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(served_name=CHAT, task="generate", max_model_len=CONTEXT, source="test"),
            ModelCard(served_name=EMBED, task="embed", max_model_len=512, source="test"),
        ]

    def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
               hints: RoutingHints) -> AsyncIterator[EngineEvent]:
        raise AssertionError(f"a hostile request reached the engine: {body!r:.200}")

    async def readiness(self) -> Readiness:
        return Readiness(ready=True, dependencies={})


@pytest.fixture
async def api(db_pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    tenant = await create_tenant(db_pool, TenantCreate(name=f"hostile-{uuid.uuid4().hex[:8]}"))
    key = await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="k"))
    authenticator = KeyAuthenticator(db_pool)
    await authenticator.start()
    recorder = UsageRecorder(db_pool)
    context = ApiContext(
        gateway=ModelsOnlyGateway(), authenticator=authenticator, usage=recorder,
        max_body_bytes=4 * 1024 * 1024, retries_before_first_token=0,
        limiter=InMemoryRateLimiter(RateLimitConfig()),
    )
    transport = httpx.ASGITransport(app=build_api(context), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"authorization": f"Bearer {key.secret}"}
        ) as client:
            yield client
    finally:
        await authenticator.close()
        await recorder.close()


def _error(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return dict(body["error"])


RAW_BODIES = {
    "deep nesting": b"[" * 100_000,
    "deep object": b'{"a":' * 50_000,
    # Parses (under Python's recursion limit), but Ray could not pickle it to the engine: was a 500.
    "500 deep inside a message": json.dumps({**BASE, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "extra": json.loads("[" * 500 + "]" * 500)}]}]}).encode(),
    "5000-digit integer": b'{"model": "chat-m", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}",
    "NaN": json.dumps({**BASE, "temperature": float("nan")}).encode(),
    "Infinity": json.dumps({**BASE, "frequency_penalty": float("inf")}).encode(),
    "-Infinity": json.dumps({**BASE, "presence_penalty": float("-inf")}).encode(),
    "1e309": json.dumps(BASE)[:-1].encode() + b', "top_k": 1e309}',
    "lone surrogate escape": json.dumps(BASE).replace('"Hi"', '"a\\ud800b"').encode(),
    "lone low surrogate": json.dumps(BASE).replace('"Hi"', '"\\udfff"').encode(),
    "surrogate bytes": json.dumps(BASE).replace('"Hi"', '"x"').encode().replace(b'"x"', b'"\xed\xa0\x80"'),
    "surrogate in a key": json.dumps(BASE)[:-1].encode() + b', "\\ud800": 1}',
}


@pytest.mark.parametrize("name", RAW_BODIES)
async def test_unparseable_bodies_are_invalid_json(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    with caplog.at_level(logging.WARNING):
        resp = await api.post("/v1/chat/completions", content=RAW_BODIES[name],
                              headers={"content-type": "application/json"})
    assert _error(resp)["code"] == "invalid_json"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_valid_surrogate_pair_is_still_accepted_as_text(api: httpx.AsyncClient) -> None:
    """"\\ud83d\\ude00" is one emoji: only unpaired surrogates are refused (here the request goes on
    to a model that does not exist, a 404 — past the body check)."""
    body = json.dumps({**BASE, "model": "nope"}).replace('"Hi"', '"\\ud83d\\ude00"').encode()
    resp = await api.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 404, resp.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("chat/completions", {**BASE, "max_tokens": 10**13}, "max_tokens"),
        ("chat/completions", {**BASE, "n": 16, "max_tokens": 10**11}, "max_tokens"),
        ("chat/completions", {**BASE, "max_tokens": CONTEXT + 1}, "max_tokens"),
        ("chat/completions", {**BASE, "max_completion_tokens": 10**13}, "max_completion_tokens"),
        ("chat/completions", {**BASE, "max_completion_tokens": 10**6}, "max_completion_tokens"),
        ("chat/completions", {**BASE, "seed": 2**63}, "seed"),
        ("chat/completions", {**BASE, "seed": -(2**63) - 1}, "seed"),
        ("completions", {**PROMPT, "max_tokens": 10**13}, "max_tokens"),
        ("completions", {**PROMPT, "prompt": [10**20]}, "prompt"),
        ("completions", {**PROMPT, "prompt": [-5, 3]}, "prompt"),
        ("completions", {**PROMPT, "prompt": [[1, 2**63]]}, "prompt"),
        ("embeddings", {**EMBEDDING, "input": [[10**20]]}, "input"),
        ("embeddings", {**EMBEDDING, "input": [-1]}, "input"),
        ("embeddings", {**EMBEDDING, "dimensions": 10**20}, "dimensions"),
    ],
)
async def test_out_of_range_numbers_name_their_field(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any], param: str
) -> None:
    with caplog.at_level(logging.WARNING):
        resp = await api.post(f"/v1/{path}", json=body)
    error = _error(resp)
    assert error["param"] == param, error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_huge_content_length_header_is_not_a_500(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/chat/completions", content=json.dumps(BASE).encode(),
                          headers={"content-type": "application/json", "content-length": "9" * 5000})
    assert resp.status_code < 500


def test_reservation_arithmetic_stays_within_the_limiters_bound() -> None:
    """Whatever reaches it (the protocol bounds each factor), the reservation never exceeds what an
    AdmissionRequest accepts: a request is refused or admitted, never a 500."""
    huge = {"messages": [{"role": "user", "content": "x" * 30}], "max_tokens": 10**15, "n": 16}
    assert reserved_tokens("chat", huge, CONTEXT) == MAX_RESERVED_TOKENS
    deep: Any = "x" * 3
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    assert reserved_tokens("chat", {"messages": [{"role": "user", "content": deep}], "max_tokens": 1}, CONTEXT) > 0


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"model": "a\x00b"}, "model"),
        ({"model": "m" * 257}, "model"),
        ({"start": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))}, "start"),
        ({"end": datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14)))}, "end"),
    ],
)
async def test_usage_report_refuses_values_postgresql_cannot_take(
    db_pool: asyncpg.Pool, query: dict[str, Any], param: str
) -> None:
    """The admin usage report's query string: these reached asyncpg and came back as a 500."""
    with pytest.raises(InvalidRequestError) as refused:
        await usage_report(db_pool, UsageQuery(**query))
    assert refused.value.param == param and refused.value.status_code == 400


async def test_usage_report_takes_any_zone_within_range(db_pool: asyncpg.Pool) -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    query = UsageQuery(start=start, end=start + timedelta(days=1))
    assert query.start == start and query.start.utcoffset() == timedelta(0)
    assert await usage_report(db_pool, query) == []


async def test_output_budget_is_checked_without_a_limiter_too() -> None:
    """A deployment with limits off still refuses an output budget past the model's context."""
    from crosslogic.api.admission import admit
    from crosslogic.auth.context import AuthContext
    from crosslogic.tenants.models import Limits

    auth = AuthContext(
        tenant_id=uuid.uuid4(), tenant_name="t", key_id=uuid.uuid4(), key_name="k", key_prefix="sk-cl-test",
        scopes=frozenset(), key_limits=Limits(), tenant_limits=Limits(), stripe_customer_id=None,
    )
    with pytest.raises(InvalidRequestError) as refused:
        await admit(None, auth, request_id="req_1", endpoint="chat", body={**BASE, "max_tokens": CONTEXT + 1},
                    model=CHAT, max_model_len=CONTEXT, lease_ttl_s=30.0)
    assert refused.value.param == "max_tokens" and refused.value.code == "context_length_exceeded"
    gate = await admit(None, auth, request_id="req_2", endpoint="chat", body={**BASE, "max_tokens": CONTEXT},
                       model=CHAT, max_model_len=CONTEXT, lease_ttl_s=30.0)
    assert await gate.settle(0)


async def test_top_logprobs_beyond_any_engine_is_refused_by_name(api: httpx.AsyncClient) -> None:
    error = _error(await api.post("/v1/chat/completions", json={**BASE, "logprobs": True, "top_logprobs": 10**12}))
    assert error["param"] == "top_logprobs"


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """MAX_DEPTH levels in all (body object included) parse; one more is refused."""
    from crosslogic.api.body import MAX_DEPTH, loads

    nested: Any = {"type": "string"}
    for _ in range(MAX_DEPTH - 2):  # + the body object + the innermost object = MAX_DEPTH
        nested = {"a": nested}
    assert loads(json.dumps({"schema": nested}).encode())["schema"]
    with pytest.raises(InvalidRequestError, match="nested deeper"):
        loads(json.dumps({"schema": {"a": nested}}).encode())


@pytest.mark.parametrize(("extra", "refused"), [
    ({"top_logprobs": 2}, True), ({"top_logprobs": -1, "logprobs": False}, True),
    ({"top_logprobs": 0}, False), ({"top_logprobs": 2, "logprobs": True}, False),
])
def test_top_logprobs_needs_logprobs(extra: dict[str, Any], refused: bool) -> None:
    """vLLM's rule, checked at the ingress (the engine's refusal reached the client as a 500)."""
    from crosslogic.api.body import parse
    from crosslogic.protocol.openai import ChatCompletionRequest

    if refused:
        with pytest.raises(InvalidRequestError) as error:
            parse(ChatCompletionRequest, {**BASE, **extra})
        assert error.value.param == "top_logprobs"
    else:
        parse(ChatCompletionRequest, {**BASE, **extra})
