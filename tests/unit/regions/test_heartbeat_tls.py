"""The heartbeat endpoint over TLS (real uvicorn, a CA the test generates): an agent trusting the CA
gets its signed heartbeat accepted; a client without the CA is refused by TLS before any byte of it."""

from __future__ import annotations

import ssl
from pathlib import Path

import asyncpg
import httpx
import pytest
from heartbeat_support import MASTER, heartbeat, heartbeat_app, region_name, secret_of, signed

from crosslogic.regions import registry
from crosslogic.regions.app_config import GatewayListenConfig
from crosslogic.regions.gateway_server import serve_gateway
from crosslogic.regions.heartbeats import HeartbeatVerifier
from crosslogic.regions.protocol import HEARTBEAT_PATH
from tests.tls_ca import make_ca


async def test_signed_heartbeat_over_tls(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    tls = make_ca(tmp_path)
    name = region_name("tls")
    await registry.create_region(db_pool, name)
    verifier = HeartbeatVerifier(db_pool, MASTER)
    plane = heartbeat_app(verifier)
    listen = GatewayListenConfig(host="127.0.0.1", port=0, tls_certfile=tls.server_cert, tls_keyfile=tls.server_key)
    server, url = await serve_gateway(plane.app, listen)
    try:
        assert url.startswith("https://127.0.0.1:")
        raw, headers = signed(secret_of(name), heartbeat(name))
        async with httpx.AsyncClient(base_url=url, verify=ssl.create_default_context(cafile=tls.ca_cert)) as agent:
            response = await agent.post(HEARTBEAT_PATH, content=raw, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["region"] == name
        assert [a.heartbeat.region for a in plane.published] == [name]

        # The system's trust store does not know our CA: the handshake fails, nothing reaches the app.
        raw, headers = signed(secret_of(name), heartbeat(name))
        async with httpx.AsyncClient(base_url=url) as stranger:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await stranger.post(HEARTBEAT_PATH, content=raw, headers=headers)
        # Plain HTTP to the TLS port is no way around it either.
        async with httpx.AsyncClient(base_url=url.replace("https://", "http://")) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.post(HEARTBEAT_PATH, content=raw, headers=headers)
        assert len(plane.published) == 1
    finally:
        await server.stop()
        await verifier.close()
