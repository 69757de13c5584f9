"""Live streams end within a second when their key is revoked or their tenant suspended.

The credential checks go through the real `KeyAuthenticator` on a real PostgreSQL (revocation reaches it
by NOTIFY, as in production); the stream being guarded is a plain generator standing in for the
relay's SSE output, so the test can see exactly what the client would get and that its `finally`
(where the relay settles and meters) ran.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from crosslogic.api.live_streams import LiveStreams
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.errors import PermissionDeniedError, ServiceUnavailableError
from crosslogic.tenants.api_key_repository import create_api_key, revoke_api_key
from crosslogic.tenants.models import ApiKeyCreate, CreatedApiKey, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant, set_tenant_status


class Source:
    """An endless SSE stream, one event every `pause_s`; records whether its `finally` ran."""

    def __init__(self, pause_s: float = 0.02) -> None:
        self.pause_s = pause_s
        self.sent = 0
        self.closed = False

    async def events(self) -> AsyncIterator[str]:
        try:
            while True:
                await asyncio.sleep(self.pause_s)
                self.sent += 1
                yield f'data: {{"n": {self.sent}}}\n\n'
        finally:
            self.closed = True


@pytest.fixture
async def auth(database_url: str) -> AsyncIterator[KeyAuthenticator]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    authenticator = KeyAuthenticator(pool)
    await authenticator.start()
    yield authenticator
    await authenticator.close()
    await pool.close()


async def new_key(db: asyncpg.Pool) -> tuple[uuid.UUID, CreatedApiKey]:
    tenant = await create_tenant(db, TenantCreate(name=f"live-{uuid.uuid4().hex[:8]}"))
    return tenant.id, await create_api_key(db, tenant.id, ApiKeyCreate(name="live"))


async def consume(stream: AsyncIterator[str], received: list[str]) -> float:
    """Read the whole stream; returns when it ended (monotonic)."""
    async for chunk in stream:
        received.append(chunk)
    return time.monotonic()


@pytest.mark.parametrize("change", ["revoke key", "suspend tenant"])
async def test_stream_ends_within_a_second_with_an_error_event(
    db_pool: asyncpg.Pool, auth: KeyAuthenticator, change: str
) -> None:
    tenant_id, key = await new_key(db_pool)
    header = f"Bearer {key.secret}"
    live = LiveStreams(interval_s=0.5)
    source = Source()
    received: list[str] = []
    stream = live.guard(source.events(), subject=key.key.prefix, check=lambda: auth.authenticate(header, None))
    reader = asyncio.create_task(consume(stream, received))
    await asyncio.sleep(0.6)
    assert len(live) == 1 and not reader.done()

    changed_at = time.monotonic()
    if change == "revoke key":
        await revoke_api_key(db_pool, key.key.id)
    else:
        await set_tenant_status(db_pool, tenant_id, "suspended")
    ended_at = await asyncio.wait_for(reader, timeout=5)

    assert ended_at - changed_at < 1.0
    assert source.closed  # the relay's finally (settle + meter) runs on this path
    assert len(live) == 0 and live.ended == 1
    error = json.loads(received[-1].removeprefix("data: "))["error"]
    assert error["code"] == ("invalid_api_key" if change == "revoke key" else "tenant_suspended")
    assert all('"n"' in chunk for chunk in received[:-1]) and len(received) > 10


async def test_a_valid_key_streams_to_the_end_and_the_watcher_stops(
    db_pool: asyncpg.Pool, auth: KeyAuthenticator
) -> None:
    _, key = await new_key(db_pool)
    header = f"Bearer {key.secret}"
    live = LiveStreams(interval_s=0.05)

    async def finite() -> AsyncIterator[str]:
        for i in range(20):
            await asyncio.sleep(0.01)
            yield f"data: {i}\n\n"

    received: list[str] = []
    await consume(live.guard(finite(), subject=key.key.prefix, check=lambda: auth.authenticate(header, None)), received)
    assert len(received) == 20 and live.ended == 0
    await asyncio.sleep(0.1)
    assert live._watcher is not None and live._watcher.done()  # nothing runs while no stream is live


async def test_an_outage_of_the_check_does_not_end_streams() -> None:
    live = LiveStreams(interval_s=0.02)
    source = Source(pause_s=0.01)

    async def unreachable() -> None:
        raise ServiceUnavailableError("database unreachable")

    received: list[str] = []
    stream = live.guard(source.events(), subject="k", check=unreachable)
    reader = asyncio.create_task(consume(stream, received))
    await asyncio.sleep(0.3)
    assert not reader.done() and live.ended == 0
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert source.closed and len(live) == 0


async def test_a_client_gone_is_not_taken_for_a_revocation() -> None:
    live = LiveStreams(interval_s=10)
    source = Source(pause_s=0.01)

    async def valid() -> None:
        return None

    reader = asyncio.create_task(consume(live.guard(source.events(), subject="k", check=valid), []))
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert source.closed and live.ended == 0 and len(live) == 0


async def test_narrowing_the_scopes_ends_a_stream_of_a_model_no_longer_allowed(
    db_pool: asyncpg.Pool, auth: KeyAuthenticator
) -> None:
    tenant = await create_tenant(db_pool, TenantCreate(name=f"live-{uuid.uuid4().hex[:8]}"))
    key = await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="scoped", scopes=["chat-a", "chat-b"]))
    header = f"Bearer {key.secret}"
    live = LiveStreams(interval_s=0.2)
    received: list[str] = []
    stream = live.guard(Source().events(), subject=key.key.prefix, check=lambda: auth.authenticate(header, "chat-a"))
    reader = asyncio.create_task(consume(stream, received))
    await asyncio.sleep(0.3)
    await db_pool.execute("UPDATE api_keys SET scopes = '{chat-b}' WHERE id = $1", key.key.id)
    await asyncio.wait_for(reader, timeout=2)
    error = json.loads(received[-1].removeprefix("data: "))["error"]
    assert error["param"] == "model" and live.ended == 1


async def test_a_stream_ended_while_its_client_reads_slowly_ends_at_the_next_chunk() -> None:
    """The stream is mostly handing chunks to a slow client (not waiting for the engine): it is not
    cut mid-write, and ends with the error event when the client comes back for the next chunk."""
    live = LiveStreams(interval_s=0.05)
    source = Source(pause_s=0.001)
    refused = False

    async def check() -> None:
        if refused:
            raise PermissionDeniedError("The organization of this API key is suspended.", code="tenant_suspended")

    stream = live.guard(source.events(), subject="k", check=check)
    received = [await anext(stream)]
    refused = True
    await asyncio.sleep(0.3)  # several check rounds while the client is away
    assert live.ended == 1
    received += [chunk async for chunk in stream]
    assert len(received) == 2 and '"tenant_suspended"' in received[1]
    assert source.closed and len(live) == 0
