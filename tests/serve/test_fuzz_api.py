"""Schema-driven fuzzing of every route of the served OpenAPI document (/v1, /admin/v1 and the rest)
against the real stack: never a 5xx, every 4xx in OpenAI's error shape, nothing written for a
refused request.

Reproducible and bounded: Hypothesis draws a fixed number of cases per operation from a derandomized
seed (`EXAMPLES`), with generated token limits clamped so the real engines answer in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode

from crosslogic.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from tests.fuzz.oracle import ErrorLogWatch, Tally, check_ledger
from tests.fuzz.schema_cases import clamp_generation, fuzz_operation
from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

# (positive, negative) cases per operation.
EXAMPLES = {
    "inference": (36, 12),  # POST /v1/chat/completions, /v1/completions, /v1/embeddings
    "v1": (6, 6),  # GET /v1/models, /v1/models/{model_id}
    "status": (2, 0),  # /health, /ready
    "admin": (6, 4),  # every /admin/v1 operation
    "other": (4, 4),  # the Stripe webhook
}
INFERENCE = {
    "/v1/chat/completions": CHAT_MODEL,
    "/v1/completions": CHAT_MODEL,
    "/v1/embeddings": EMBED_MODEL,
}
DOCUMENTED = {
    "/v1/chat/completions": set(ChatCompletionRequest.model_fields),
    "/v1/completions": set(CompletionRequest.model_fields),
    "/v1/embeddings": set(EmbeddingRequest.model_fields),
}
# Rows an admin route may create: (table, the operation whose 201 creates one).
CREATED_BY = {
    "tenants": "POST /admin/v1/tenants",
    "api_keys": "POST /admin/v1/tenants/{tenant_id}/keys",
    "models": "POST /admin/v1/models",
}


def _kind(path: str) -> str:
    if path in INFERENCE:
        return "inference"
    if path.startswith("/v1/"):
        return "v1"
    if path.startswith("/admin/v1"):
        return "admin"
    return "status" if path in ("/health", "/ready") else "other"


@pytest.fixture(scope="module")
def openapi(serve_stack: ServeStack) -> dict[str, Any]:
    # Published without credentials, as OpenAI publishes its own.
    response = httpx.get(f"{serve_stack.base_url}/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture(scope="module")
def fuzz_tenant(serve_stack: ServeStack) -> tuple[str, str]:
    """(tenant id, secret) of a tenant of its own: its ledger rows are the fuzz run's alone."""
    tenant_id, _, secret = serve_stack.create_tenant_and_key("fuzz-api")
    return tenant_id, secret


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@pytest.fixture(scope="module")
def v1_tally() -> Tally:
    return Tally("schema fuzz /v1")


def _operations(openapi: dict[str, Any], kinds: set[str]) -> list[Any]:
    schema = schemathesis.openapi.from_dict(openapi)
    operations = [result.ok() for result in schema.get_all_operations()]
    return [op for op in operations if _kind(op.path) in kinds]


def _tame(path: str) -> Any:
    """Positive cases: mostly the model the route serves (else nearly every case is a 404 for an
    unknown model and nothing reaches an engine), token limits clamped, and half of them without
    the random extra fields the schema allows (which the engine mostly refuses)."""

    def tame(case: Any, data: st.DataObject) -> None:
        if path in INFERENCE and isinstance(case.body, dict):
            if data.draw(st.booleans()):
                for name in set(case.body) - DOCUMENTED[path]:
                    del case.body[name]
            served = INFERENCE[path]
            other = EMBED_MODEL if served == CHAT_MODEL else CHAT_MODEL
            case.body["model"] = data.draw(st.sampled_from([served, served, served, other, case.body.get("model")]))
            if served == CHAT_MODEL:
                clamp_generation(case.body)
        elif path == "/v1/models/{model_id}" and case.path_parameters:
            case.path_parameters["model_id"] = data.draw(
                st.sampled_from([CHAT_MODEL, EMBED_MODEL, case.path_parameters["model_id"]])
            )

    return tame


def _fuzz(operations: list[Any], headers: dict[str, str], base_url: str, tally: Tally, http: requests.Session) -> dict[str, int]:
    sent: dict[str, int] = {}
    for op in operations:
        positive, negative = EXAMPLES[_kind(op.path)]
        for mode, examples in ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, negative)):
            if examples:
                sent[f"{op.label} {mode.value}"] = fuzz_operation(
                    op, mode=mode, examples=examples, base_url=base_url, headers=headers, tally=tally,
                    session=http, tame=_tame(op.path) if mode is GenerationMode.POSITIVE else None,
                )
    return sent


def _show(capsys: pytest.CaptureFixture[str], tally: Tally, sent: dict[str, int], started: float) -> None:
    with capsys.disabled():
        print(f"\n{tally.summary()} in {time.monotonic() - started:.1f}s")
        print(f"  4xx by code and param: {tally.top_reasons()}")
        print("  per operation: " + ", ".join(f"{label}: {n}" for label, n in sent.items()))


def test_openapi_documents_the_real_request_bodies(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    for path, required in (
        ("/v1/chat/completions", {"model", "messages"}),
        ("/v1/completions", {"model", "prompt"}),
        ("/v1/embeddings", {"model", "input"}),
    ):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        assert set(schema["required"]) == required
        assert "$defs" not in str(schema)  # inlined: a local reference would point nowhere
    assert any(path.startswith("/admin/v1/") for path in paths)


def test_v1_routes(
    openapi: dict[str, Any], serve_stack: ServeStack, fuzz_tenant: tuple[str, str],
    session: requests.Session, v1_tally: Tally, capsys: pytest.CaptureFixture[str],
) -> None:
    operations = _operations(openapi, {"inference", "v1", "status"})
    assert {op.path for op in operations} >= {*INFERENCE, "/v1/models", "/v1/models/{model_id}"}
    headers = {"authorization": f"Bearer {fuzz_tenant[1]}"}
    started, logs = time.monotonic(), ErrorLogWatch(serve_stack.cluster.temp_dir)
    sent = _fuzz(operations, headers, serve_stack.base_url, v1_tally, session)
    _show(capsys, v1_tally, sent, started)
    assert v1_tally.served > 0, "no generated request reached an engine: the fuzz learns nothing"
    errors = logs.new_errors()
    assert not v1_tally.violations and not errors, "\n".join([v1_tally.report(), *errors[:20]])


async def test_refused_v1_requests_left_no_usage(
    database_url: str, fuzz_tenant: tuple[str, str], v1_tally: Tally
) -> None:
    if not v1_tally.requests:
        pytest.skip("the /v1 fuzz did not run")
    problems = await check_ledger(database_url, fuzz_tenant[0], v1_tally)
    assert not problems, "\n".join(problems[:20])


async def _row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return {table: int(await conn.fetchval(f"SELECT count(*) FROM {table}")) for table in CREATED_BY}
    finally:
        await conn.close()


async def test_admin_and_other_routes(
    openapi: dict[str, Any], serve_stack: ServeStack, database_url: str,
    session: requests.Session, capsys: pytest.CaptureFixture[str],
) -> None:
    tally = Tally("schema fuzz /admin/v1 and the rest")
    started, logs = time.monotonic(), ErrorLogWatch(serve_stack.cluster.temp_dir)
    before = await _row_counts(database_url)
    admin_ops = _operations(openapi, {"admin"})
    assert len(admin_ops) >= 10
    # In a thread: the requests are blocking and this test's event loop is the session's.
    sent = await asyncio.to_thread(_fuzz, admin_ops, serve_stack.admin_headers(), serve_stack.base_url, tally, session)
    sent |= await asyncio.to_thread(_fuzz, _operations(openapi, {"other"}), {}, serve_stack.base_url, tally, session)
    after = await _row_counts(database_url)
    _show(capsys, tally, sent, started)
    errors = logs.new_errors()
    assert not tally.violations and not errors, "\n".join([tally.report(), *errors[:20]])
    # A refused request wrote nothing: rows appeared only for the creations that were answered 201.
    expected = {table: tally.answers[label, 201] for table, label in CREATED_BY.items()}
    expected["models"] -= tally.answers["DELETE /admin/v1/models/{model_id}", 200]
    assert {table: after[table] - before[table] for table in CREATED_BY} == expected
