"""The regional gateway's HTTP and auth layer over real uvicorn (serve_gateway), real signing and real TLS.

The engine behind it is a small async generator yielding engine-event tuples: the real engine path
(Serve handles, vLLM) is covered by tests/serve/test_region_stack.py; here what is tested is who
gets in, how events are framed, and that a hang-up closes the engine's iterator.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from crosslogic.auth.throttle import AuthThrottleConfig, FailureBudget
from crosslogic.engine.base import Endpoint, EngineEvent
from crosslogic.errors import ServiceUnavailableError
from crosslogic.regions.app_config import GatewayListenConfig
from crosslogic.regions.gateway_server import build_gateway_app, serve_gateway
from crosslogic.regions.protocol import GATEWAY_HEALTH_PATH, GENERATE_PATH, decode_event
from crosslogic.regions.signing import sign
from tests.tls_ca import TlsFiles, make_ca

REGION = "eu-test"
SECRET = bytes(range(32))
MODEL = "smollm2-135m"


class Engine:
    """Yields a few chunks and usage per request; records what it was asked and whether it was closed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []
        self.closed = asyncio.Event()
        self.fail_before: Exception | None = None
        self.fail_after: Exception | None = None
        self.chunks = 3
        self.pause_s = 0.0

    async def stream(self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str) -> AsyncIterator[EngineEvent]:
        self.calls.append((model, endpoint, body, request_id))
        try:
            if self.fail_before is not None:
                raise self.fail_before
            for i in range(self.chunks):
                yield ("chunk", f"data: {i}\n\n", {"prompt_tokens": 5, "completion_tokens": i + 1})
                if self.fail_after is not None:
                    raise self.fail_after
                await asyncio.sleep(self.pause_s)
            yield ("usage", {"prompt_tokens": 5, "completion_tokens": self.chunks})
        finally:
            self.closed.set()


@asynccontextmanager
async def running(engine: Engine, listen: GatewayListenConfig | None = None, **kwargs: Any) -> AsyncIterator[str]:
    app = build_gateway_app(region=REGION, secret=SECRET, stream=engine.stream, models=lambda: [MODEL], **kwargs)
    server, url = await serve_gateway(app, listen or GatewayListenConfig())
    try:
        yield url
    finally:
        await server.stop()


def request_body(model: str = MODEL, **extra: Any) -> bytes:
    return json.dumps({
        "model": model, "endpoint": "chat", "request_id": "req-1",
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}, **extra,
    }).encode()


def signed(body: bytes, *, secret: bytes = SECRET, region: str = REGION, path: str = GENERATE_PATH,
           method: str = "POST", **kwargs: Any) -> dict[str, str]:
    return sign(secret, purpose="gateway", region=region, method=method, path=path, body=body, **kwargs)


async def post(url: str, body: bytes, headers: dict[str, str], **client: Any) -> httpx.Response:
    async with httpx.AsyncClient(**client) as http:
        return await http.post(url + GENERATE_PATH, content=body, headers=headers)


def assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    assert "Traceback" not in response.text


async def test_unsigned_call_is_refused_and_reaches_no_engine() -> None:
    engine = Engine()
    async with running(engine) as url:
        response = await post(url, request_body(), {})
        assert_refused(response, "missing_signature")
        async with httpx.AsyncClient() as http:
            health = await http.get(url + GATEWAY_HEALTH_PATH)
        assert health.status_code == 401
    assert engine.calls == []


async def test_wrong_secret_wrong_region_skew_and_purpose_are_refused() -> None:
    engine = Engine()
    body = request_body()
    async with running(engine) as url:
        assert_refused(await post(url, body, signed(body, secret=bytes(32))), "bad_signature")
        assert_refused(await post(url, body, signed(body, region="us-other")), "unknown_region")
        assert_refused(await post(url, body, signed(body, now=time.time() - 120)), "clock_skew")
        # A heartbeat's signature (purpose "agent") is no credential here.
        agent = sign(SECRET, purpose="agent", region=REGION, method="POST", path=GENERATE_PATH, body=body)
        assert_refused(await post(url, body, agent), "bad_signature")
        # Signed for another body.
        assert_refused(await post(url, body, signed(request_body(request_id="other"))), "bad_signature")
    assert engine.calls == []


async def test_a_replayed_request_is_refused() -> None:
    engine = Engine()
    body = request_body()
    headers = signed(body)
    async with running(engine) as url:
        first = await post(url, body, headers)
        assert first.status_code == 200
        assert_refused(await post(url, body, headers), "replayed_nonce")
    assert len(engine.calls) == 1


async def test_failed_authentication_is_throttled_but_never_the_signed_caller() -> None:
    engine = Engine()
    budget = AuthThrottleConfig(per_address=FailureBudget(failures=5, window_s=60))
    async with running(engine, auth_throttle=budget) as url:
        body = request_body()
        statuses = [(await post(url, body, signed(body, secret=bytes(32)))).status_code for _ in range(8)]
        assert statuses == [401] * 5 + [429] * 3
        throttled = await post(url, body, {})
        assert throttled.json()["error"]["code"] == "too_many_failed_auth" and "retry-after" in throttled.headers
        # Same address, right signature: served.
        assert (await post(url, body, signed(body))).status_code == 200
    assert len(engine.calls) == 1


async def test_bad_body_is_400_and_unknown_model_404() -> None:
    engine = Engine()
    async with running(engine) as url:
        for body, param in ((b"{not json", None), (b'{"model": "x"}', "endpoint"),
                            (request_body(endpoint="images"), "endpoint")):
            response = await post(url, body, signed(body))
            assert response.status_code == 400, response.text
            assert response.json()["error"]["type"] == "invalid_request_error"
            assert response.json()["error"]["param"] == param
        body = request_body(model="no-such-model")
        response = await post(url, body, signed(body))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
    assert engine.calls == []


async def test_oversized_body_is_413() -> None:
    engine = Engine()
    body = request_body(pad="x" * 5000)
    async with running(engine, max_body_bytes=4096) as url:
        response = await post(url, body, signed(body))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_ndjson_round_trip() -> None:
    engine = Engine()
    body = request_body()
    async with running(engine) as url:
        response = await post(url, body, signed(body))
        health_headers = signed(b"", method="GET", path=GATEWAY_HEALTH_PATH)
        async with httpx.AsyncClient() as http:
            health = await http.get(url + GATEWAY_HEALTH_PATH, headers=health_headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    events = [decode_event(line) for line in response.content.splitlines()]
    assert events == [
        ("chunk", "data: 0\n\n", {"prompt_tokens": 5, "completion_tokens": 1}),
        ("chunk", "data: 1\n\n", {"prompt_tokens": 5, "completion_tokens": 2}),
        ("chunk", "data: 2\n\n", {"prompt_tokens": 5, "completion_tokens": 3}),
        ("usage", {"prompt_tokens": 5, "completion_tokens": 3}),
    ]
    assert engine.calls == [(MODEL, "chat", json.loads(body)["body"], "req-1")]
    assert health.status_code == 200
    assert health.json() == {"region": REGION, "ok": True, "models": [MODEL]}


@pytest.mark.parametrize("where", ["before", "during"])
async def test_engine_error_becomes_an_error_event(where: str) -> None:
    engine = Engine()
    error = ServiceUnavailableError("no healthy engine for model 'smollm2-135m'")
    if where == "before":
        engine.fail_before = error
    else:
        engine.fail_after = error
    body = request_body()
    async with running(engine) as url:
        response = await post(url, body, signed(body))
    assert response.status_code == 200
    events = [decode_event(line) for line in response.content.splitlines()]
    assert events[-1] == ("error", {**error.body(), "status": 503})
    assert len(events) == (1 if where == "before" else 2)


async def test_unexpected_engine_failure_is_a_502_event_without_traceback() -> None:
    engine = Engine()
    engine.fail_after = KeyError("secret internals")
    body = request_body()
    async with running(engine) as url:
        response = await post(url, body, signed(body))
    kind, payload = decode_event(response.content.splitlines()[-1])
    assert kind == "error" and payload["status"] == 502
    assert payload["error"]["code"] == "engine_error" and "internals" not in response.text


async def test_hang_up_closes_the_engine_stream() -> None:
    engine = Engine()
    engine.chunks, engine.pause_s = 10_000, 0.01  # 100 s if nobody stops it
    body = request_body()
    async with running(engine) as url:
        async with httpx.AsyncClient() as http:
            async with http.stream("POST", url + GENERATE_PATH, content=body, headers=signed(body)) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    assert decode_event(line)[0] == "chunk"
                    break
        # The connection is gone: the gateway must close the engine's iterator (vLLM abort).
        await asyncio.wait_for(engine.closed.wait(), timeout=5)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_ca(tmp_path_factory.mktemp("ca"))


def client_context(files: TlsFiles, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files.ca_cert)
    if with_cert:
        context.load_cert_chain(files.client_cert, files.client_key)
    return context


async def test_tls_with_the_test_ca(tls: TlsFiles) -> None:
    engine = Engine()
    body = request_body()
    listen = GatewayListenConfig(tls_certfile=tls.server_cert, tls_keyfile=tls.server_key)
    async with running(engine, listen) as url:
        assert url.startswith("https://127.0.0.1:")
        response = await post(url, body, signed(body), verify=client_context(tls, False))
        assert response.status_code == 200 and decode_event(response.content.splitlines()[-1])[0] == "usage"
        with pytest.raises(httpx.HTTPError):
            await post(url.replace("https://", "http://"), body, signed(body))
        with pytest.raises(httpx.ConnectError):  # a server the system CAs do not vouch for
            await post(url, body, signed(body))


async def test_mtls_refuses_a_client_without_certificate(tls: TlsFiles) -> None:
    engine = Engine()
    listen = GatewayListenConfig(tls_certfile=tls.server_cert, tls_keyfile=tls.server_key, client_ca=tls.ca_cert)
    async with running(engine, listen) as url:
        body = request_body()
        with pytest.raises(httpx.HTTPError):
            response = await post(url, body, signed(body), verify=client_context(tls, False))
            response.raise_for_status()
        body = request_body()
        response = await post(url, body, signed(body), verify=client_context(tls, True))
        assert response.status_code == 200
    assert len(engine.calls) == 1


async def test_port_in_use_and_bad_tls_files_fail_cleanly(tmp_path: Path) -> None:
    engine = Engine()
    async with running(engine) as url:
        port = int(url.rsplit(":", 1)[1])
        app = build_gateway_app(region=REGION, secret=SECRET, stream=engine.stream, models=lambda: [MODEL])
        with pytest.raises(OSError):
            await serve_gateway(app, GatewayListenConfig(port=port))
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(OSError):
        await serve_gateway(app, GatewayListenConfig(tls_certfile=missing, tls_keyfile=missing))
