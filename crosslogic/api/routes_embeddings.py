"""POST /v1/embeddings (when an embedding model is configured)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api.context import Context, RequestId
from crosslogic.api.endpoint import serve_openai_request
from crosslogic.api.openapi_bodies import ERRORS, json_body
from crosslogic.protocol.openai import EmbeddingRequest

router = APIRouter()


@router.post(
    "/v1/embeddings", summary="Create embeddings", response_model=None,
    openapi_extra=json_body(EmbeddingRequest), responses=ERRORS,
)
async def embeddings(request: Request, ctx: Context, request_id: RequestId) -> JSONResponse | StreamingResponse:
    return await serve_openai_request(
        request, ctx, request_id, schema=EmbeddingRequest, endpoint="embeddings", task="embed"
    )
