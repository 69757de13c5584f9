"""Per-application dependencies of the /v1 routes, held on `app.state.api`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from opentelemetry.trace import Tracer

from crosslogic.api.accounting import UsageSink
from crosslogic.api.gateway import Gateway
from crosslogic.api.headroom import Headroom
from crosslogic.api.live_streams import LiveStreams
from crosslogic.api.readiness_probes import DependencyProbes
from crosslogic.api.request_ids import request_ids
from crosslogic.auth.context import AuthContext
from crosslogic.batches.files import FileStore
from crosslogic.batches.store import BatchStore
from crosslogic.engine.base import ModelCard
from crosslogic.errors import InvalidRequestError, ModelNotFoundError
from crosslogic.fairness.gateway import FairQueues
from crosslogic.ratelimit.base import RateLimiter
from crosslogic.responses.store import ResponseStore
from crosslogic.telemetry.request_metrics import NullRequestMetrics, RequestMetricsSink


class Authenticator(Protocol):
    async def authenticate(
        self,
        authorization: str | None,
        model: str | None,
        *,
        asgi_scope: Mapping[str, Any] | None = None,
    ) -> AuthContext: ...


@dataclass
class ApiContext:
    gateway: Gateway
    authenticator: Authenticator
    usage: UsageSink
    max_body_bytes: int
    retries_before_first_token: int
    region: str = "local"
    # None: no limits enforced (e.g. a single-tenant deployment); otherwise Redis or in-cluster.
    limiter: RateLimiter | None = None
    lease_ttl_s: float = 60.0
    # Set: a key with room to spare has its admission decided alongside the engine call.
    headroom: Headroom | None = None
    # Streams in progress, re-checked so a revoked key or suspended tenant stops within a second.
    live_streams: LiveStreams = field(default_factory=LiveStreams)
    # RED figures of each request (crosslogic/telemetry); the Ray ingress exports them.
    metrics: RequestMetricsSink = field(default_factory=NullRequestMetrics)
    # /ready's own probes (PostgreSQL, Redis); None where the app has no database of its own.
    probes: DependencyProbes | None = None
    # Stored responses of /v1/responses (PostgreSQL); None: the Responses API is not offered.
    responses: ResponseStore | None = None
    # Files and batches of the Batch API (PostgreSQL + file storage); None: not offered.
    files: FileStore | None = None
    batches: BatchStore | None = None
    # Set when fairness is on (crosslogic/fairness): engine calls wait for a fair share of the model's slots.
    fairness: FairQueues | None = None
    # Set when tracing is on (crosslogic/tracing): a span per request and per stage; None costs nothing.
    tracer: Tracer | None = None

    async def authenticate(self, request: Request, model: str | None) -> AuthContext:
        # The ASGI scope says who is asking, read only when authentication fails (throttling).
        return await self.authenticator.authenticate(
            request.headers.get("authorization"), model, asgi_scope=request.scope
        )

    def model_card(self, name: str, task: str) -> ModelCard:
        for card in self.gateway.models():
            if card.served_name == name:
                if card.task != task:
                    what = "an embedding model" if card.task == "embed" else "a text-generation model"
                    raise InvalidRequestError(
                        f"model '{name}' is {what} and does not support this endpoint",
                        param="model",
                        code="model_not_supported",
                    )
                return card
        raise ModelNotFoundError(
            f"The model '{name}' does not exist or you do not have access to it.", param="model"
        )


# async: FastAPI runs sync dependencies in a thread pool (a thread hop per request each).
async def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx


async def get_request_id(request: Request) -> str:
    # The server's id (RequestIdMiddleware): it keys the ledger, the limiter's lease and the engine
    # request; the client's own id is only metadata beside it (request_ids).
    return request_ids(request)[0]


Context = Annotated[ApiContext, Depends(get_context)]
RequestId = Annotated[str, Depends(get_request_id)]
