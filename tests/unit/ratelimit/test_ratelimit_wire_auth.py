"""The limiter's stream answers only callers that prove its secret, and bounds its connections.

A real `WireServer` on loopback serving a real `InMemoryRateLimiter`; attackers are raw sockets
speaking the frame format, impostor servers are plain asyncio servers. No Ray.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from crosslogic.ratelimit import AdmissionRequest, InMemoryRateLimiter, Limits, RateLimitConfig
from crosslogic.ratelimit.subjects import key_subject, tenant_subject
from crosslogic.ratelimit.wire import WireClient, WireDown, WireServer
from crosslogic.ratelimit.wire_protocol import CLIENT_LABEL, SERVER_LABEL, frame, new_secret, proof, read_frame

SECRET = new_secret()
TENANT = tenant_subject("t1", None)
KEY = key_subject("t1", "k1", Limits(rpm=100))
ServerFactory = Callable[..., Awaitable[tuple[InMemoryRateLimiter, WireServer]]]




async def _closed_without_answer(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> None:
    assert await asyncio.wait_for(reader.read(), timeout=timeout_s) == b""


def _admit_frame(request_id: str) -> bytes:
    request = AdmissionRequest(request_id=request_id, reserved_tokens=5, tenant=TENANT, key=KEY)
    return frame({"id": 1, "op": "admit", "args": [request.model_dump(mode="json")]})


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[WireServer] = []

    async def make(**options: float) -> tuple[InMemoryRateLimiter, WireServer]:
        limiter = InMemoryRateLimiter(RateLimitConfig(), backend_label="actor")
        server = WireServer(limiter, secret=SECRET, **options)  # type: ignore[arg-type]
        await server.start("127.0.0.1")
        servers.append(server)
        return limiter, server

    yield make
    for server in servers:
        await server.close()


async def _client(server: WireServer, secret: bytes = SECRET, timeout_s: float = 2.0) -> WireClient:
    endpoint = server.endpoint
    return await WireClient.connect(endpoint.host, endpoint.port, secret=secret, timeout_s=timeout_s)


async def test_the_right_secret_is_served(make_server: ServerFactory) -> None:
    _, server = await make_server()
    assert "secret" not in repr(server.endpoint) and SECRET.hex() not in repr(server.endpoint)
    client = await _client(server)
    try:
        assert (await client.call("admit", AdmissionRequest(
            request_id="ok", reserved_tokens=5, tenant=TENANT, key=KEY))).admitted
        assert (await client.call("state", KEY)).requests_in_window == 1
    finally:
        await client.close()
    assert sum(server.refusals.counts.values()) == 0


async def test_calls_without_the_handshake_get_no_answer(make_server: ServerFactory) -> None:
    """What was reproduced: connect, send `state` (or `admit`) straight away. Now: closed, unanswered,
    and nothing reached the limiter."""
    limiter, server = await make_server()
    assert server.address is not None
    for payload in (frame({"id": 1, "op": "state", "args": [KEY.model_dump(mode="json")]}), _admit_frame("sneak")):
        reader, writer = await asyncio.open_connection(*server.address)
        hello = await read_frame(reader)
        assert set(hello) == {"hello", "nonce", "idle_s"}  # the challenge: nothing about any tenant
        writer.write(payload)
        await _closed_without_answer(reader)
        writer.close()
    assert limiter.subjects == 0
    assert server.refusals.counts["handshake_failed"] == 2


async def test_a_wrong_proof_is_refused(make_server: ServerFactory) -> None:
    limiter, server = await make_server()
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    hello = await read_frame(reader)
    nonce = "a" * 64
    # Right shape, wrong secret; then a call in the same write, as an eager attacker would.
    writer.write(frame({"nonce": nonce, "proof": proof(new_secret(), CLIENT_LABEL, str(hello["nonce"]), nonce)})
                 + _admit_frame("after-bad-proof"))
    await _closed_without_answer(reader)  # no server proof, no answer to the call
    writer.close()
    # The server's own proof reflected back as the client's is no good either.
    reader, writer = await asyncio.open_connection(*server.address)
    hello = await read_frame(reader)
    writer.write(frame({"nonce": nonce, "proof": proof(SECRET, SERVER_LABEL, str(hello["nonce"]), nonce)}))
    await _closed_without_answer(reader)
    writer.close()
    assert limiter.subjects == 0 and server.refusals.counts["handshake_failed"] == 2


async def test_a_client_with_the_wrong_secret_is_refused(make_server: ServerFactory) -> None:
    _, server = await make_server()
    with pytest.raises(WireDown, match="handshake did not complete"):
        await _client(server, secret=new_secret())
    assert server.refusals.counts["handshake_failed"] == 1
    assert server.connections == 0


async def test_a_silent_or_oversized_handshake_is_closed(make_server: ServerFactory) -> None:
    _, server = await make_server(handshake_timeout_s=0.3)
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    await read_frame(reader)  # the challenge; never answered
    await _closed_without_answer(reader, timeout_s=2.0)
    writer.close()
    assert server.refusals.counts["handshake_timeout"] == 1
    # Before authenticating, a peer cannot make the server buffer a large frame.
    reader, writer = await asyncio.open_connection(*server.address)
    await read_frame(reader)
    writer.write(struct.pack("!I", 64 * 1024))
    await _closed_without_answer(reader)
    writer.close()
    assert server.refusals.counts["handshake_failed"] == 1


async def test_refusals_are_counted_each_but_logged_once_per_peer(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, server = await make_server()
    with caplog.at_level(logging.WARNING, logger="crosslogic.ratelimit"):
        for _ in range(5):
            with pytest.raises(WireDown):
                await _client(server, secret=new_secret())
    warnings = [r for r in caplog.records if "refused a connection from 127.0.0.1" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert server.refusals.counts["handshake_failed"] == 5


async def test_connections_beyond_the_cap_are_closed_at_once(make_server: ServerFactory) -> None:
    _, server = await make_server(max_connections=2)
    assert server.address is not None
    first, second = await _client(server), await _client(server)
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        await _closed_without_answer(reader, timeout_s=1.0)  # not even a challenge
        writer.close()
        with pytest.raises(WireDown):
            await _client(server)
        assert server.refusals.counts["too_many_connections"] == 2
        await first.close()
        for _ in range(100):  # the server sees the close asynchronously
            if server.connections < 2:
                break
            await asyncio.sleep(0.01)
        third = await _client(server)
        assert await third.call("ping") is True
        await third.close()
    finally:
        await first.close()
        await second.close()


async def test_idle_connections_are_closed_and_clients_keep_theirs_alive(make_server: ServerFactory) -> None:
    # Timeouts of a second: a loaded machine (vLLM runs beside the unit tests) can stall a ping 0.3 s.
    _, server = await make_server(idle_timeout_s=1.0)
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    hello = await read_frame(reader)
    assert hello["idle_s"] == 1.0
    nonce = "b" * 64
    writer.write(frame({"nonce": nonce, "proof": proof(SECRET, CLIENT_LABEL, str(hello["nonce"]), nonce)}))
    await read_frame(reader)  # authenticated, then silent
    await _closed_without_answer(reader, timeout_s=4.0)
    writer.close()
    assert server.idle_closed == 1
    # The real client pings every third of the idle timeout, so a quiet replica keeps its stream.
    client = await _client(server)
    try:
        await asyncio.sleep(2.5)
        assert client.connected and server.idle_closed == 1
        assert (await client.call("state", KEY)).requests_in_window == 0
    finally:
        await client.close()


async def _impostor(respond: Callable[[dict[str, object]], dict[str, object] | None]) -> tuple[asyncio.Server, list[dict[str, object]]]:
    """A server that took the port but does not hold the secret: challenges, then answers `respond`."""
    received: list[dict[str, object]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame({"hello": 1, "nonce": "d" * 64, "idle_s": 300}))
        try:
            while True:
                received.append(await read_frame(reader))
                answer = respond(received[-1])
                if answer is not None:
                    writer.write(frame(answer))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), received


@pytest.mark.parametrize("respond", [
    pytest.param(lambda m: {"proof": "0" * 64}, id="bogus-proof"),
    pytest.param(lambda m: {"proof": m.get("proof")}, id="reflected-proof"),
    pytest.param(lambda m: None, id="no-proof"),
])
async def test_the_client_refuses_a_server_that_cannot_prove_the_secret(
    respond: Callable[[dict[str, object]], dict[str, object] | None],
) -> None:
    server, received = await _impostor(respond)
    try:
        with pytest.raises(WireDown):
            await WireClient.connect("127.0.0.1", server.sockets[0].getsockname()[1], secret=SECRET, timeout_s=0.5)
        await asyncio.sleep(0.05)
        assert len(received) == 1 and "op" not in received[0]  # the handshake answer, never a call
    finally:
        server.close()
