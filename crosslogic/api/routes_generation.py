"""POST /v1/chat/completions and POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api.context import Context, RequestId
from crosslogic.api.endpoint import serve_openai_request
from crosslogic.api.openapi_bodies import ERRORS, json_body
from crosslogic.protocol.openai import ChatCompletionRequest, CompletionRequest

router = APIRouter()


@router.post(
    "/v1/chat/completions", summary="Create a chat completion", response_model=None,
    openapi_extra=json_body(ChatCompletionRequest), responses=ERRORS,
)
async def chat_completions(request: Request, ctx: Context, request_id: RequestId) -> JSONResponse | StreamingResponse:
    return await serve_openai_request(
        request, ctx, request_id, schema=ChatCompletionRequest, endpoint="chat", task="generate"
    )


@router.post(
    "/v1/completions", summary="Create a completion", response_model=None,
    openapi_extra=json_body(CompletionRequest), responses=ERRORS,
)
async def completions(request: Request, ctx: Context, request_id: RequestId) -> JSONResponse | StreamingResponse:
    return await serve_openai_request(
        request, ctx, request_id, schema=CompletionRequest, endpoint="completions", task="generate"
    )
