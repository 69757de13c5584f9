"""The session header reaches the request router: x-session-id on a /v1 request becomes the routing
hints' session_key, which session_affinity hashes (salted by the tenant's cache salt) with the body.

The real /v1 app in-process (key authenticator on PostgreSQL, in-memory limiter), a scripted gateway
that keeps the hints and bodies it was handed (tests/unit/api/scripted_api.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from crosslogic.engine.base import EngineEvent
from crosslogic.routing.affinity_keys import session_hash
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.local_router import LocalRouter
from crosslogic.routing.policies import make_policy
from tests.unit.api.scripted_api import ScriptedGateway, scripted_api

CHAT = "chat-m"


class RecordingGateway(ScriptedGateway):
    def __init__(self) -> None:
        super().__init__([CHAT])
        self.seen: list[tuple[RoutingHints, dict[str, Any]]] = []

    def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
               hints: RoutingHints) -> AsyncIterator[EngineEvent]:
        self.seen.append((hints, body))
        return super().stream(model, endpoint, body, request_id, hints)


async def test_session_header_becomes_the_hints_session_key(db_pool: asyncpg.Pool) -> None:
    gateway = RecordingGateway()
    async with scripted_api(db_pool, gateway) as api:
        headers = {"authorization": f"Bearer {api.secret}"}
        request = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "user": "alice"}
        for extra in ({"x-session-id": "conversation-7"}, {}):
            response = await api.client.post("/v1/chat/completions", json=request, headers={**headers, **extra})
            assert response.status_code == 200, response.text
    (with_header, body), (without_header, _) = gateway.seen
    assert with_header.session_key == "conversation-7" and without_header.session_key is None
    # What the request router derives from it: the header's session, salted per tenant.
    router = LocalRouter(make_policy("session_affinity"))
    router.fill_keys(with_header, "chat", body)
    assert body["cache_salt"] and with_header.session_hash == session_hash(body, "conversation-7")
    assert with_header.session_hash != session_hash(body, None)
    assert with_header.prefix_hashes is None  # session_affinity computes no prefix hashes
