"""POST /v1/embeddings (when an embedding model is configured)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api.body import parse, read_json
from crosslogic.api.context import Context, RequestId
from crosslogic.api.relay import relay
from crosslogic.protocol.openai import EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings", summary="Create embeddings", response_model=None)
async def embeddings(request: Request, ctx: Context, request_id: RequestId) -> JSONResponse | StreamingResponse:
    # The key first, as OpenAI does: a caller without a valid key learns nothing about the body.
    await ctx.authenticate(request, None)
    data = await read_json(request, ctx.max_body_bytes)
    parsed = parse(EmbeddingRequest, data)
    await ctx.authenticate(request, parsed.model)
    ctx.model_card(parsed.model, "embed")
    return await relay(
        ctx.gateway, parsed.model, "embeddings", data, request_id,
        stream=False, retries=ctx.retries_before_first_token,
    )
