"""The control plane's gateway client against a real regional gateway (crosslogic/regions/gateway_server.py)
served by uvicorn in this process: framing, signing, and how each failure maps onto the relay's retry rule."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crosslogic.engine.base import CHUNK, ERROR, USAGE, EngineEvent
from crosslogic.errors import InvalidRequestError, ServiceUnavailableError, UpstreamError
from crosslogic.regions.app_config import GatewayListenConfig
from crosslogic.regions.config import RegionsConfig, TlsClientConfig
from crosslogic.regions.gateway_client import RegionClient
from crosslogic.regions.gateway_server import GatewayServer, build_gateway_app, serve_gateway
from crosslogic.regions.signing import derive_region_secret
from tests.tls_ca import make_ca

MASTER = secrets.token_bytes(32)
MODEL = "smol"
EVENTS: list[EngineEvent] = [
    (CHUNK, 'data: {"x":1}\n\n', {"prompt_tokens": 3, "completion_tokens": 1}, {"first_ms": 1.5}),
    (CHUNK, "data: [DONE]\n\n", {"prompt_tokens": 3, "completion_tokens": 2}),
    (USAGE, {"prompt_tokens": 3, "completion_tokens": 2}),
]


@dataclass
class Target:
    name: str
    gateway_url: str
    secret_generation: int = 1


@dataclass
class Engine:
    """What the gateway's engine stream saw: calls, and whether a stream was closed before its end."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    closed_early: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def stream(self, model: str, endpoint: str, body: dict[str, Any], request_id: str) -> AsyncIterator[EngineEvent]:
        self.calls.append((model, endpoint, body, request_id))
        if body.get("fail"):
            raise InvalidRequestError("bad parameter", param="temperature")
        if body.get("hang"):
            finished = False
            try:
                yield EVENTS[0]
                await self.release.wait()
                finished = True
            finally:
                if not finished:
                    self.closed_early.set()
            return
        for event in EVENTS:
            yield event


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[GatewayServer, Engine]]:
    engine = Engine()
    app = build_gateway_app(region="eu", secret=derive_region_secret(MASTER, "eu", 1),
                            stream=engine.stream, models=lambda: [MODEL])
    server, _ = await serve_gateway(app, GatewayListenConfig(host="127.0.0.1", port=0))
    yield server, engine
    engine.release.set()
    await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[RegionClient]:
    c = RegionClient(RegionsConfig(connect_timeout_s=2.0), MASTER)
    yield c
    await c.aclose()


async def collect(events: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    return [e async for e in events]


async def test_events_arrive_as_a_local_engine_yields_them(gateway: tuple[GatewayServer, Engine], client: RegionClient) -> None:
    server, engine = gateway
    body = {"messages": [{"role": "user", "content": "hé"}], "stream": True}
    for _ in range(2):  # the second call reuses the kept-alive connection and a fresh nonce
        got = await collect(client.stream(Target("eu", server.url), MODEL, "chat", body, "req-1"))
        assert got == EVENTS
    assert engine.calls == [(MODEL, "chat", body, "req-1")] * 2


async def test_an_engine_error_is_an_error_event(gateway: tuple[GatewayServer, Engine], client: RegionClient) -> None:
    server, _ = gateway
    got = await collect(client.stream(Target("eu", server.url), MODEL, "chat", {"fail": True}, "req-2"))
    assert len(got) == 1 and got[0][0] == ERROR
    assert got[0][1]["status"] == 400 and got[0][1]["error"]["param"] == "temperature"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retryable(client: RegionClient) -> None:
    with pytest.raises(ServiceUnavailableError, match="region 'eu' is unreachable") as info:
        await collect(client.stream(Target("eu", f"http://127.0.0.1:{free_port()}"), MODEL, "chat", {}, "req-3"))
    assert info.value.retryable


async def test_connect_timeout_is_retryable() -> None:
    # A listener whose backlog is full never completes the handshake: the connect timeout fires.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(8):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(listener.getsockname())
                fillers.append(s)
            c = RegionClient(RegionsConfig(connect_timeout_s=0.3), MASTER)
            host, port = listener.getsockname()
            url = f"http://{host}:{port}"
            try:
                with pytest.raises(ServiceUnavailableError) as info:
                    await asyncio.wait_for(collect(c.stream(Target("eu", url), MODEL, "chat", {}, "req-4")), 10)
            finally:
                await c.aclose()
        finally:
            for s in fillers:
                s.close()
    assert info.value.retryable


async def test_a_refused_signature_is_retryable_and_logged(
    gateway: tuple[GatewayServer, Engine], client: RegionClient, caplog: pytest.LogCaptureFixture
) -> None:
    server, engine = gateway
    caplog.set_level(logging.ERROR, logger="crosslogic.regions.gateway_client")
    # The registry says generation 2 (rotated) but the region still runs generation 1's secret.
    with pytest.raises(UpstreamError, match="refused the control plane's credential") as info:
        await collect(client.stream(Target("eu", server.url, secret_generation=2), MODEL, "chat", {}, "req-5"))
    assert info.value.retryable
    assert "region eu refused our signature (401)" in caplog.text and "CROSSLOGIC_REGION_MASTER_SECRET" in caplog.text
    assert engine.calls == []


async def test_a_model_the_region_does_not_serve_is_retryable(gateway: tuple[GatewayServer, Engine], client: RegionClient) -> None:
    server, _ = gateway
    with pytest.raises(UpstreamError, match="404") as info:
        await collect(client.stream(Target("eu", server.url), "other", "chat", {}, "req-6"))
    assert info.value.retryable


@asynccontextmanager
async def raw_gateway(response: bytes, *, abort: bool = False, silent: bool = False) -> AsyncIterator[str]:
    """A socket that answers the first HTTP request with these bytes, then closes (or, `abort`, resets;
    `silent`, keeps open and says nothing more, as a region whose link was cut) the connection:
    framing faults uvicorn won't make."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        if silent:
            await asyncio.sleep(3600)
        if abort:
            writer.transport.abort()  # the region's host died
        else:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_a_broken_connection_mid_stream_is_an_upstream_error(client: RegionClient) -> None:
    line = b'["chunk","data: {}\\n\\n",null]\n'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
    got: list[EngineEvent] = []
    async with raw_gateway(head + b"%x\r\n%s\r\n" % (len(line), line), abort=True) as url:
        with pytest.raises(UpstreamError, match="broke during the request"):
            async for event in client.stream(Target("eu", url), MODEL, "chat", {}, "req-7"):
                got.append(event)
    assert got == [(CHUNK, "data: {}\n\n", None)]


async def test_a_region_gone_silent_mid_stream_is_given_up_after_the_idle_timeout() -> None:
    """No FIN, no RST, no keep-alive: the stream ends with an UpstreamError after stream_idle_timeout_s."""
    line = b'["chunk","data: {}\\n\\n",null]\n'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
    client = RegionClient(RegionsConfig(connect_timeout_s=2.0, stream_idle_timeout_s=0.5), MASTER)
    got: list[EngineEvent] = []
    try:
        async with raw_gateway(head + b"%x\r\n%s\r\n" % (len(line), line), silent=True) as url:
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamError, match="broke during the request"):
                async for event in client.stream(Target("eu", url), MODEL, "chat", {}, "req-9"):
                    got.append(event)
            waited = asyncio.get_running_loop().time() - started
    finally:
        await client.aclose()
    assert got == [(CHUNK, "data: {}\n\n", None)] and 0.4 < waited < 5.0


async def test_keepalives_carry_a_slow_engine_past_the_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real gateway whose engine is silent longer than the client's idle timeout: its keep-alive
    lines keep the stream open, and the client sees only the engine's events."""
    import crosslogic.regions.gateway_server as gateway_server

    monkeypatch.setattr(gateway_server, "KEEPALIVE_S", 0.1)

    async def slow(model: str, endpoint: str, body: dict[str, Any], request_id: str) -> AsyncIterator[EngineEvent]:
        yield EVENTS[0]
        await asyncio.sleep(1.2)  # a long prefill, say: well past the 0.5 s idle timeout
        for event in EVENTS[1:]:
            yield event

    app = build_gateway_app(region="eu", secret=derive_region_secret(MASTER, "eu", 1), stream=slow,
                            models=lambda: [MODEL])
    server, _ = await serve_gateway(app, GatewayListenConfig(host="127.0.0.1", port=0))
    client = RegionClient(RegionsConfig(connect_timeout_s=2.0, stream_idle_timeout_s=0.5), MASTER)
    try:
        assert await collect(client.stream(Target("eu", server.url), MODEL, "chat", {}, "req-11")) == EVENTS
    finally:
        await client.aclose()
        await server.stop()


@pytest.mark.parametrize(("response", "error", "message"), [
    (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncontent-length: 8\r\n\r\n{\"a\":1}\n",
     UpstreamError, "malformed event"),
    (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy", ServiceUnavailableError, "no capacity"),
    (b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops", UpstreamError, r"failed the request \(500\)"),
])
async def test_a_gateway_answer_that_is_no_stream_is_retryable(
    client: RegionClient, response: bytes, error: type[Exception], message: str
) -> None:
    async with raw_gateway(response) as url:
        with pytest.raises(error, match=message) as info:
            await collect(client.stream(Target("eu", url), MODEL, "chat", {}, "req-8"))
    assert getattr(info.value, "retryable", False)


async def test_closing_early_aborts_the_remote_request(gateway: tuple[GatewayServer, Engine], client: RegionClient) -> None:
    server, engine = gateway
    events = client.stream(Target("eu", server.url), MODEL, "chat", {"hang": True}, "req-10")
    assert await anext(events) == EVENTS[0]
    await events.aclose()  # type: ignore[attr-defined]
    # The gateway saw the connection go and closed the engine's stream before its end.
    await asyncio.wait_for(engine.closed_early.wait(), timeout=5)


async def test_mtls_with_the_config_ca_and_client_certificate(tmp_path: Path) -> None:
    """regions.tls: the client trusts the CA bundle and presents its certificate to an mTLS gateway."""
    tls = make_ca(tmp_path)
    engine = Engine()
    app = build_gateway_app(region="eu", secret=derive_region_secret(MASTER, "eu", 1),
                            stream=engine.stream, models=lambda: [MODEL])
    listen = GatewayListenConfig(tls_certfile=tls.server_cert, tls_keyfile=tls.server_key, client_ca=tls.ca_cert)
    server, url = await serve_gateway(app, listen)
    assert url.startswith("https://")
    with_cert = RegionClient(RegionsConfig(tls=TlsClientConfig(
        ca_bundle=tls.ca_cert, client_cert=tls.client_cert, client_key=tls.client_key)), MASTER)
    without_cert = RegionClient(RegionsConfig(tls=TlsClientConfig(ca_bundle=tls.ca_cert)), MASTER)
    system_cas = RegionClient(RegionsConfig(), MASTER)
    try:
        assert await collect(with_cert.stream(Target("eu", url), MODEL, "chat", {}, "req-tls")) == EVENTS
        # Refused by the gateway's handshake (no certificate), or ours (a CA we do not trust): both
        # are a region we cannot use right now, retried elsewhere.
        for client in (without_cert, system_cas):
            with pytest.raises((ServiceUnavailableError, UpstreamError)) as info:
                await collect(client.stream(Target("eu", url), MODEL, "chat", {}, "req-tls-2"))
            assert info.value.retryable
    finally:
        for client in (with_cert, without_cert, system_cas):
            await client.aclose()
        await server.stop()
    assert [call[3] for call in engine.calls] == ["req-tls"]
