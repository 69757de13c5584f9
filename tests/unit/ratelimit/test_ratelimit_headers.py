"""x-ratelimit-* headers, the 429 error, and how the official `openai` client reacts to them."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from crosslogic.errors import RateLimitError
from crosslogic.ratelimit import (
    Admission,
    Limits,
    Rejection,
    SubjectStatus,
    WindowStatus,
    format_duration,
    rate_limit_error,
    rate_limit_headers,
)
from crosslogic.ratelimit.headers import TokenRateLimitError


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"), (0.0001, "1ms"), (0.012, "12ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"),
        (8.64, "8.64s"), (59.9999, "1m0s"), (60, "1m0s"), (90.5, "1m30.5s"), (360, "6m0s"),
        (3723.25, "1h2m3.25s"), (-1, "0s"),
    ],
)
def test_durations_are_formatted_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def _status(kind: str, requests: tuple[int, int, float] | None,
            tokens: tuple[int, int, float] | None) -> SubjectStatus:
    def window(v: tuple[int, int, float] | None) -> WindowStatus | None:
        return None if v is None else WindowStatus(limit=v[0], remaining=v[1], reset_s=v[2])

    return SubjectStatus.model_validate({
        "kind": kind, "id": f"{kind}-1", "limits": Limits(), "requests": window(requests),
        "tokens": window(tokens)})


def _admission(rejection: Rejection | None = None) -> Admission:
    return Admission(
        request_id="r1", tenant_id="tenant-1", key_id="key-1", admitted=rejection is None,
        reserved_tokens=100, lease_ttl_s=60, backend="redis", rejection=rejection,
        subjects=[_status("key", (100, 40, 12.0), (10_000, 9_000, 0.012)),
                  _status("tenant", (500, 30, 1.5), None)],
    )


def test_headers_show_the_tighter_of_key_and_tenant() -> None:
    assert rate_limit_headers(_admission()) == {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "30",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "9000",
        "x-ratelimit-reset-tokens": "12ms",
    }


def test_unlimited_subjects_have_no_headers() -> None:
    admission = _admission().model_copy(update={"subjects": [_status("tenant", None, None)]})
    assert rate_limit_headers(admission) == {}


def _rejection(limit: str, retry: float | None, kind: str = "key") -> Rejection:
    return Rejection.model_validate({
        "subject_kind": kind, "subject_id": "key-1", "limit": limit, "value": 100,
        "requested": 1 if limit != "tpm" else 400, "retry_after_s": retry})


def test_rpm_rejection_is_an_openai_429() -> None:
    error = rate_limit_error(_admission(_rejection("rpm", 1.2345)))
    assert isinstance(error, RateLimitError) and error.status_code == 429
    body = error.body()["error"]
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert "requests per minute (RPM)" in body["message"] and "Limit 100" in body["message"]
    assert "1.235s" in body["message"] and "key-1" in body["message"]
    assert error.headers["retry-after"] == "2" and error.headers["retry-after-ms"] == "1235"
    assert error.headers["x-ratelimit-remaining-requests"] == "30"


def test_tpm_rejection_has_type_tokens() -> None:
    error = rate_limit_error(_admission(_rejection("tpm", 0.0, kind="tenant")))
    assert isinstance(error, TokenRateLimitError)
    assert error.body()["error"]["type"] == "tokens"
    assert "organization" in error.message and "tokens per minute (TPM)" in error.message
    # Never a zero wait: clients would treat it as "no hint" and back off on their own.
    assert error.headers["retry-after-ms"] == "1" and error.headers["retry-after"] == "1"


def test_request_too_large_tells_clients_not_to_retry() -> None:
    error = rate_limit_error(_admission(_rejection("tpm", None)))
    assert error.headers["x-should-retry"] == "false" and "retry-after" not in error.headers
    assert error.message.startswith("Request too large") and "requested 400" in error.message


def test_admitted_admission_has_no_error() -> None:
    with pytest.raises(ValueError):
        rate_limit_error(_admission())


_COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class _Server:
    """A real HTTP server answering with our 429 a set number of times, then a completion."""

    def __init__(self, error: RateLimitError, failures: int) -> None:
        self.calls: list[float] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions() -> JSONResponse:
            self.calls.append(time.monotonic())
            if len(self.calls) <= failures:
                return JSONResponse(error.body(), status_code=error.status_code,
                                    headers=error.headers)
            return JSONResponse(_COMPLETION)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))

    def client(self, max_retries: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key="sk-test", base_url=f"http://127.0.0.1:{self.port}/v1",
                                  max_retries=max_retries)


@asynccontextmanager
async def _serve(error: RateLimitError, failures: int) -> AsyncIterator[_Server]:
    server = _Server(error, failures)
    task = asyncio.create_task(server.server.serve())
    while not server.server.started:
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.server.should_exit = True
        await task


async def test_openai_client_waits_retry_after_then_succeeds() -> None:
    error = rate_limit_error(_admission(_rejection("rpm", 1.3)))
    async with _serve(error, failures=1) as server:
        client = server.client(max_retries=2)
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        assert completion.choices[0].message.content == "hi"
        assert len(server.calls) == 2
        # retry-after-ms = 1300: the client waited that long, not its own first backoff (<= 0.5 s).
        assert 1.28 <= server.calls[1] - server.calls[0] < 2.5


async def test_openai_client_raises_rate_limit_error() -> None:
    error = rate_limit_error(_admission(_rejection("rpm", 0.05)))
    async with _serve(error, failures=10) as server:
        client = server.client(max_retries=1)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
        assert caught.value.type == "requests"
        assert caught.value.response.headers["retry-after-ms"] == "50"
        assert len(server.calls) == 2


async def test_openai_client_does_not_retry_a_request_that_can_never_fit() -> None:
    error = rate_limit_error(_admission(_rejection("tpm", None)))
    async with _serve(error, failures=10) as server:
        client = server.client(max_retries=3)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        assert len(server.calls) == 1
