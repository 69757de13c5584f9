"""The trace context crosses to a region in the signed GatewayRequest: the regional gateway (real app
under uvicorn, crosslogic/regions/gateway_server.py) hands it to its engine stream by keyword, and an
untraced request's body has no trace_context key (the wire format it had before tracing)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from crosslogic.engine.base import USAGE, EngineEvent
from crosslogic.regions.app_config import GatewayListenConfig
from crosslogic.regions.config import RegionsConfig
from crosslogic.regions.gateway_client import RegionClient
from crosslogic.regions.gateway_server import build_gateway_app, serve_gateway
from crosslogic.regions.signing import derive_region_secret
from tests.unit.regions.test_gateway_client import Target

MASTER = secrets.token_bytes(32)
CARRIER = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "vendor=1"}


@dataclass
class Engine:
    seen: list[dict[str, str] | None] = field(default_factory=list)

    async def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str, /,
                     *, trace_context: dict[str, str] | None = None) -> AsyncIterator[EngineEvent]:
        self.seen.append(trace_context)
        yield (USAGE, {"prompt_tokens": 1, "completion_tokens": 1})


async def test_the_region_engine_gets_the_trace_context() -> None:
    engine = Engine()
    bodies: list[bytes] = []
    app = build_gateway_app(region="eu", secret=derive_region_secret(MASTER, "eu", 1), stream=engine.stream,
                            models=lambda: ["m"])
    server, url = await serve_gateway(app, GatewayListenConfig(host="127.0.0.1", port=0))
    client = RegionClient(RegionsConfig(connect_timeout_s=2.0), MASTER)

    async def keep_body(request: httpx.Request) -> None:
        bodies.append(request.content)

    client._http.event_hooks["request"].append(keep_body)
    try:
        for context in (CARRIER, None):
            got = [e async for e in client.stream(Target("eu", url), "m", "chat", {"x": None}, "req-1",
                                                  trace_context=context)]
            assert got == [(USAGE, {"prompt_tokens": 1, "completion_tokens": 1})]
    finally:
        await client.aclose()
        await server.stop()
    assert engine.seen == [CARRIER, None]
    assert json.loads(bodies[0])["trace_context"] == CARRIER
    assert json.loads(bodies[1]) == {"model": "m", "endpoint": "chat", "body": {"x": None}, "request_id": "req-1"}
