"""The real /v1 app (`build_api`) in-process, with a scripted gateway standing in for the engines.

Shared by the unit tests of what the app reports about a request (the request log, the request
metrics, its spans): the key authenticator on PostgreSQL, the in-memory rate limiter and the usage
recorder are real; only the engines are scripted (the engine is not under test there). The script
streams three tokens `token_gap_s` apart (or answers whole); `fail_first` attempts fail before their
first event, models in `broken` always do, and models in `fails_mid_stream` fail after their first token.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from opentelemetry.trace import Tracer

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.api.gateway import Readiness
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.engine.base import CHUNK, RESPONSE, USAGE, EngineEvent, ModelCard
from crosslogic.errors import UpstreamError
from crosslogic.metering import UsageRecorder
from crosslogic.ratelimit import InMemoryRateLimiter, RateLimitConfig
from crosslogic.routing.hints import RoutingHints
from crosslogic.telemetry.request_metrics import NullRequestMetrics, RequestMetricsSink
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant

USAGE_3 = {"prompt_tokens": 5, "completion_tokens": 3}


class ScriptedGateway:
    def __init__(
        self,
        models: Collection[str],
        *,
        region: str = "local",
        token_gap_s: float = 0.0,
        broken: Collection[str] = (),
        fails_mid_stream: Collection[str] = (),
    ) -> None:
        self._models = list(models)
        self._region = region
        self._token_gap_s = token_gap_s
        self._broken = frozenset(broken)
        self._mid_stream = frozenset(fails_mid_stream)
        self.fail_first = 0  # the next n attempts fail before their first event (a replica died)

    def models(self) -> list[ModelCard]:
        return [ModelCard(served_name=name, task="generate", max_model_len=2048, source="test")
                for name in self._models]

    def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
               hints: RoutingHints) -> AsyncIterator[EngineEvent]:
        hints.region = self._region
        hints.chosen = f"replica-{len(hints.exclude)}"
        failing = self.fail_first > 0 or model in self._broken
        self.fail_first -= 1
        return self._events(bool(body.get("stream")), failing=failing, mid_stream=model in self._mid_stream)

    async def _events(self, stream: bool, *, failing: bool, mid_stream: bool) -> AsyncIterator[EngineEvent]:
        if failing:
            raise UpstreamError("replica died")
        await asyncio.sleep(0.01)
        if not stream:
            yield (RESPONSE, {"object": "chat.completion", "choices": [], "usage": USAGE_3})
            return
        for n in (1, 2, 3):
            yield (CHUNK, f"data: {json.dumps({'n': n})}\n\n", {"prompt_tokens": 5, "completion_tokens": n})
            if mid_stream:
                raise UpstreamError("engine died after the first token")
            await asyncio.sleep(self._token_gap_s)
        yield (CHUNK, "data: [DONE]\n\n", USAGE_3)
        yield (USAGE, USAGE_3)

    async def readiness(self) -> Readiness:
        return Readiness(ready=True, dependencies={})


@dataclass(frozen=True)
class ScriptedApi:
    client: httpx.AsyncClient
    secret: str  # an API key of `tenant_id`'s
    tenant_id: str


@asynccontextmanager
async def scripted_api(
    pool: asyncpg.Pool,
    gateway: ScriptedGateway,
    *,
    metrics: RequestMetricsSink | None = None,
    rpm: int | None = None,
    retries_before_first_token: int = 0,
    tracer: Tracer | None = None,
) -> AsyncIterator[ScriptedApi]:
    """The app over `gateway`, a fresh tenant and key (`rpm`: the key's limit), the client."""
    tenant = await create_tenant(pool, TenantCreate(name=f"scripted-{uuid.uuid4().hex[:8]}"))
    key = await create_api_key(pool, tenant.id, ApiKeyCreate(name="k", rpm=rpm))
    authenticator = KeyAuthenticator(pool)
    await authenticator.start()
    recorder = UsageRecorder(pool)
    context = ApiContext(
        gateway=gateway, authenticator=authenticator, usage=recorder, region="local",
        max_body_bytes=1 << 20, retries_before_first_token=retries_before_first_token,
        limiter=InMemoryRateLimiter(RateLimitConfig()), metrics=metrics or NullRequestMetrics(), tracer=tracer,
    )
    transport = httpx.ASGITransport(app=build_api(context), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield ScriptedApi(client, key.secret, str(tenant.id))
    finally:
        await authenticator.close()
        await recorder.close()
