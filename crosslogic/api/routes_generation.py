"""POST /v1/chat/completions and POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api.body import parse, read_json
from crosslogic.api.context import Context, RequestId
from crosslogic.api.relay import relay
from crosslogic.protocol.openai import ChatCompletionRequest, CompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions", summary="Create a chat completion", response_model=None)
async def chat_completions(request: Request, ctx: Context, request_id: RequestId) -> JSONResponse | StreamingResponse:
    # The key first, as OpenAI does: a caller without a valid key learns nothing about the body.
    await ctx.authenticate(request, None)
    data = await read_json(request, ctx.max_body_bytes)
    parsed = parse(ChatCompletionRequest, data)
    await ctx.authenticate(request, parsed.model)
    ctx.model_card(parsed.model, "generate")
    return await relay(
        ctx.gateway, parsed.model, "chat", data, request_id,
        stream=parsed.stream, retries=ctx.retries_before_first_token,
    )


@router.post("/v1/completions", summary="Create a completion", response_model=None)
async def completions(request: Request, ctx: Context, request_id: RequestId) -> JSONResponse | StreamingResponse:
    # The key first, as OpenAI does: a caller without a valid key learns nothing about the body.
    await ctx.authenticate(request, None)
    data = await read_json(request, ctx.max_body_bytes)
    parsed = parse(CompletionRequest, data)
    await ctx.authenticate(request, parsed.model)
    ctx.model_card(parsed.model, "generate")
    return await relay(
        ctx.gateway, parsed.model, "completions", data, request_id,
        stream=parsed.stream, retries=ctx.retries_before_first_token,
    )
