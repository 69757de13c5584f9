"""Helpers of the control plane's region tests: a master secret, signed heartbeats, the heartbeat
app (the real router, verifier and PostgreSQL; `published` collects what reached `publish`)."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from crosslogic.api.errors import install_error_handlers
from crosslogic.regions.heartbeats import AcceptedHeartbeat, HeartbeatVerifier
from crosslogic.regions.protocol import HEARTBEAT_PATH, Heartbeat, RemoteReplica
from crosslogic.regions.routes import build_heartbeat_router
from crosslogic.regions.signing import derive_region_secret, sign
from crosslogic.regions.versions import local_versions

MASTER = secrets.token_bytes(32)


def region_name(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def secret_of(name: str, generation: int = 1, master: bytes = MASTER) -> bytes:
    return derive_region_secret(master, name, generation)


def heartbeat(region: str, **changes: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "region": region,
        "gateway_url": "https://127.0.0.1:9443",
        "models": ["smol"],
        "replicas": [RemoteReplica(replica_id=f"{region}#1", model="smol", running=1, waiting=2)],
        "versions": local_versions(),
        "interval_s": 2.0,
        "agent_id": "agent-1",
    }
    values.update(changes)
    return Heartbeat(**values)


def signed(
    secret: bytes, body: Heartbeat | bytes, *, region: str | None = None, now: float | None = None,
    nonce: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else body.model_dump_json().encode()
    name = region or (body.region if isinstance(body, Heartbeat) else "")
    headers = sign(secret, purpose="agent", region=name, method="POST", path=HEARTBEAT_PATH, body=raw,
                   now=now, nonce=nonce)
    return raw, {**headers, "content-type": "application/json"}


@dataclass
class HeartbeatApp:
    app: FastAPI
    verifier: HeartbeatVerifier
    published: list[AcceptedHeartbeat] = field(default_factory=list)

    def client(self, address: str = "198.51.100.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://control.test")

    async def post(self, raw: bytes, headers: dict[str, str], address: str = "198.51.100.1") -> httpx.Response:
        async with self.client(address) as client:
            return await client.post(HEARTBEAT_PATH, content=raw, headers=headers)


def heartbeat_app(verifier: HeartbeatVerifier) -> HeartbeatApp:
    app = FastAPI()
    install_error_handlers(app)
    built = HeartbeatApp(app=app, verifier=verifier)

    async def publish(accepted: AcceptedHeartbeat) -> None:
        built.published.append(accepted)

    app.include_router(build_heartbeat_router(verifier, publish))
    return built


async def denied_rows(db: asyncpg.Pool, region: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT actor, action, target_type, client_addr, result, attempts, after::text AS after FROM audit_log "
        "WHERE target_type = 'region' AND target_id = $1 AND result = 'denied' ORDER BY id",
        region,
    )
    return [{**dict(r), "after": json.loads(r["after"])} for r in rows]


def now() -> float:
    return time.time()
