"""GET /v1/models: what is actually being served."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from crosslogic.api.context import Context
from crosslogic.api.errors import error_responses
from crosslogic.protocol.openai import ModelList, ModelObject

router = APIRouter()
_STARTED = int(time.time())


@router.get("/v1/models", response_model=ModelList, summary="List served models", responses=error_responses(401, 429))
async def list_models(request: Request, ctx: Context) -> ModelList:
    auth = await ctx.authenticate(request, None)
    return ModelList(
        data=[
            ModelObject(id=card.served_name, created=_STARTED, max_model_len=card.max_model_len)
            for card in ctx.gateway.models()
            if auth.allows_model(card.served_name)
        ]
    )


@router.get(
    "/v1/models/{model_id:path}", response_model=ModelObject, summary="Retrieve a served model",
    responses=error_responses(401, 404, 429),
)
async def get_model(model_id: str, request: Request, ctx: Context) -> ModelObject:
    await ctx.authenticate(request, model_id)
    for card in ctx.gateway.models():
        if card.served_name == model_id:
            return ModelObject(id=card.served_name, created=_STARTED, max_model_len=card.max_model_len)
    from crosslogic.errors import ModelNotFoundError

    raise ModelNotFoundError(f"The model '{model_id}' does not exist or you do not have access to it.", param="model")
