"""The stream to the in-cluster limiter: same answers as in-process, failures become backend errors.

A real `WireServer` on loopback serving a real `InMemoryRateLimiter` (what the limiter actor runs),
driven by `WireClient`; no Ray. The handshake itself is tested in test_ratelimit_wire_auth.py; servers
that misbehave after it run the real server half of the handshake first.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from crosslogic.errors import ConflictError
from crosslogic.ratelimit import AdmissionRequest, InMemoryRateLimiter, Limits, RateLimitConfig
from crosslogic.ratelimit.subjects import key_subject, tenant_subject
from crosslogic.ratelimit.wire import MAX_FRAME_BYTES, WireClient, WireDown, WireServer
from crosslogic.ratelimit.wire_protocol import (
    CLIENT_LABEL,
    SERVER_LABEL,
    frame,
    new_secret,
    proof,
    read_frame,
    server_handshake,
)

SECRET = new_secret()


def _request(request_id: str, *, rpm: int | None = 3, concurrency: int | None = None) -> AdmissionRequest:
    return AdmissionRequest(
        request_id=request_id, reserved_tokens=10,
        tenant=tenant_subject("t1", None), key=key_subject("t1", "k1", Limits(rpm=rpm, max_concurrency=concurrency)),
    )


@pytest.fixture
async def served() -> AsyncIterator[tuple[InMemoryRateLimiter, WireServer]]:
    limiter = InMemoryRateLimiter(RateLimitConfig(), backend_label="actor")
    server = WireServer(limiter, secret=SECRET)
    await server.start("127.0.0.1")
    yield limiter, server
    await server.close()


async def _client(server: WireServer, timeout_s: float = 2.0) -> WireClient:
    endpoint = server.endpoint
    return await WireClient.connect(endpoint.host, endpoint.port, secret=endpoint.secret, timeout_s=timeout_s)


async def _authenticated(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection past the handshake (the real client half), to send hand-made frames."""
    reader, writer = await asyncio.open_connection(host, port)
    hello = await read_frame(reader)
    client_nonce = "c" * 64
    writer.write(frame({"nonce": client_nonce,
                       "proof": proof(SECRET, CLIENT_LABEL, hello["nonce"], client_nonce)}))
    assert (await read_frame(reader))["proof"] == proof(SECRET, SERVER_LABEL, hello["nonce"], client_nonce)
    return reader, writer



async def test_calls_answer_as_the_limiter_does(served: tuple[InMemoryRateLimiter, WireServer]) -> None:
    limiter, server = served
    client = await _client(server)
    try:
        admitted = [await client.call("admit", _request(f"r{i}")) for i in range(4)]
        assert [a.admitted for a in admitted] == [True, True, True, False]
        assert admitted[3].rejection is not None and admitted[3].rejection.limit == "rpm"
        assert admitted[0].backend == "actor"
        assert await client.call("extend", admitted[0], 30.0) is True
        settled = await client.call("settle", admitted[0], 4)
        assert settled.lease_released and settled.refunded_tokens == 6
        state = await client.call("state", key_subject("t1", "k1", Limits(rpm=3)))
        assert state.requests_in_window == 3 and state.active_leases == 2
        direct = limiter.state_now(key_subject("t1", "k1", Limits(rpm=3)))
        assert state.model_dump(exclude={"reset_s"}) == direct.model_dump(exclude={"reset_s"})
    finally:
        await client.close()


async def test_many_calls_in_flight_on_one_connection_stay_exact(served: tuple[InMemoryRateLimiter, WireServer]) -> None:
    _, server = served
    client = await _client(server)
    try:
        results = await asyncio.gather(*(client.call("admit", _request(f"c{i}", rpm=None, concurrency=7)) for i in range(50)))
        assert sum(a.admitted for a in results) == 7
        assert {a.request_id for a in results} == {f"c{i}" for i in range(50)}  # answers matched by id
    finally:
        await client.close()


async def test_duplicate_request_id_is_the_same_conflict(served: tuple[InMemoryRateLimiter, WireServer]) -> None:
    _, server = served
    client = await _client(server)
    try:
        await client.call("admit", _request("dup"))
        with pytest.raises(ConflictError) as raised:
            await client.call("admit", _request("dup"))
        assert raised.value.param == "request_id"
        assert (await client.call("admit", _request("after"))).admitted  # the stream lives on
    finally:
        await client.close()


async def test_lost_server_fails_the_calls_in_flight_and_the_next() -> None:
    """Connection lost mid-call: the call may have been applied, so it fails (the fail mode decides);
    nothing is resent."""
    # A server that reads one call and hangs up without answering.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server_handshake(reader, writer, SECRET, 300.0)
        await reader.readexactly(4)
        writer.close()

    dropping = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    client = await WireClient.connect("127.0.0.1", dropping.sockets[0].getsockname()[1], secret=SECRET,
                                      timeout_s=2.0)
    try:
        with pytest.raises(WireDown):
            await client.call("admit", _request("lost"))
        assert not client.connected
        with pytest.raises(WireDown):
            await client.call("admit", _request("next"))
    finally:
        await client.close()
        dropping.close()


async def test_no_answer_in_time_is_a_backend_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server_handshake(reader, writer, SECRET, 300.0)
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = await WireClient.connect("127.0.0.1", server.sockets[0].getsockname()[1], secret=SECRET,
                                      timeout_s=0.2)
    try:
        with pytest.raises(WireDown, match="no answer"):
            await client.call("admit", _request("slow"))
    finally:
        await client.close()
        server.close()


async def test_nobody_listening_is_a_backend_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(WireDown, match="cannot connect"):
        await WireClient.connect("127.0.0.1", port, secret=SECRET, timeout_s=1.0)


async def test_malformed_or_oversized_frames_drop_only_their_connection(served: tuple[InMemoryRateLimiter, WireServer]) -> None:
    _, server = served
    assert server.address is not None
    good = await _client(server)
    try:
        for payload in (struct.pack("!I", MAX_FRAME_BYTES + 1), struct.pack("!I", 3) + b"[1]",
                        struct.pack("!I", 5) + b"{bad}", frame({"id": 1, "op": "drop_tables", "args": []})):
            reader, writer = await _authenticated(*server.address)
            writer.write(payload)
            assert await asyncio.wait_for(reader.read(), timeout=2.0) == b""  # closed, no answer
            writer.close()
        # A well-formed call with bad arguments fails alone; the connection stays.
        reader, writer = await _authenticated(*server.address)
        writer.write(frame({"id": 7, "op": "admit", "args": [{"request_id": "x"}]}))
        answer = await read_frame(reader)
        assert answer["id"] == 7 and "ValidationError" in str(answer["failed"])
        writer.close()
        assert (await good.call("admit", _request("still-served"))).admitted
    finally:
        await good.close()

