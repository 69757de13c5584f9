"""Per-application dependencies of the /v1 routes, held on `app.state.api`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request

from crosslogic.api.gateway import Gateway
from crosslogic.api.accounting import UsageSink
from crosslogic.api.headroom import Headroom
from crosslogic.auth.context import AuthContext
from crosslogic.ratelimit.base import RateLimiter
from crosslogic.engine.base import ModelCard
from crosslogic.errors import InvalidRequestError, ModelNotFoundError


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None, model: str | None) -> AuthContext: ...


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

    async def authenticate(self, request: Request, model: str | None) -> AuthContext:
        return await self.authenticator.authenticate(request.headers.get("authorization"), model)

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
    # Ray Serve's proxy sets x-request-id (the client's, or a fresh one) and echoes it on the response.
    rid = request.headers.get("x-request-id")
    if rid and len(rid) <= 128:
        return rid
    return f"req_{uuid.uuid4().hex}"


Context = Annotated[ApiContext, Depends(get_context)]
RequestId = Annotated[str, Depends(get_request_id)]
