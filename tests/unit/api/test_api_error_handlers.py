"""`install_error_handlers`: every failure in OpenAI's error shape, never a traceback to the client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Literal

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from crosslogic.api.body import read_json
from crosslogic.api.errors import install_error_handlers
from crosslogic.errors import RateLimitError


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    max_tokens: int | None = None


def build_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict[str, str]:
        return {"model": body.model}

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimitError("slow down", headers={"retry-after": "2", "retry-after-ms": "1500"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: see the response a real client gets for an unhandled error.
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_validation_error_names_the_field_path(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}
    error = error_of(await client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == "messages.1.role" and error["type"] == "invalid_request_error"
    assert "messages.1.role" in str(error["message"])
    missing = error_of(await client.post("/v1/chat/completions", json={"messages": []}), 400)
    assert missing["param"] == "model" and missing["message"] == "missing required parameter 'model'"
    typed = error_of(await client.post("/v1/chat/completions", json={"model": "m", "messages": [], "max_tokens": "x"}), 400)
    assert typed["param"] == "max_tokens"


async def test_malformed_json_and_wrong_body_type(client: httpx.AsyncClient) -> None:
    for content, headers in ((b'{"model": ', {"content-type": "application/json"}), (b"not json", {})):
        error = error_of(await client.post("/v1/chat/completions", content=content, headers=headers), 400)
        assert error["code"] == "invalid_json"
    error_of(await client.post("/v1/chat/completions", json=["a"]), 400)


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert error_of(await client.get("/v1/nope"), 404)["code"] == "not_found"
    assert error_of(await client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"


async def test_crosslogic_error_keeps_status_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/limited")
    assert error_of(response, 429)["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "2" and response.headers["retry-after-ms"] == "1500"


async def test_unexpected_exception_is_500_without_details(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="crosslogic.api.errors"):
        response = await client.get("/boom")
    error = error_of(response, 500)
    assert error["code"] == "internal_error" and error["type"] == "server_error"
    assert "secret internal detail" not in response.text and "Traceback" not in response.text
    assert any(record.exc_info for record in caplog.records), "traceback is logged server-side"


async def test_a_client_gone_mid_body_is_not_a_server_error(caplog: pytest.LogCaptureFixture) -> None:
    """A declared Content-Length the client never completes (it hangs up): Starlette raises
    ClientDisconnect while the body is read; found by the raw fuzz suite as an ERROR 'unhandled error'."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, object]:
        return await read_json(request, 1 << 20)

    messages = iter([
        {"type": "http.request", "body": b'{"model": "m", "mess', "more_body": True},
        {"type": "http.disconnect"},
    ])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
    }
    with caplog.at_level(logging.INFO):
        await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
