"""/v1/batches: create, retrieve, list and cancel, as the official client's `client.batches.*` call
them. The work itself is done by the batch runners (crosslogic/batches/runner.py). A batch belongs
to the tenant that created it: any other caller gets a 404, and its input file must be that tenant's.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from crosslogic.api.body import parse, read_json
from crosslogic.api.context import ApiContext, Context
from crosslogic.api.errors import error_responses
from crosslogic.api.openapi_bodies import json_body
from crosslogic.api.routes_files import openai_list
from crosslogic.batches.store import BatchEndpoint, BatchStore
from crosslogic.errors import InvalidRequestError
from crosslogic.storage.pagination import check_page_size

router = APIRouter()
_ERRORS = error_responses(400, 401, 404)


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=100)
    endpoint: BatchEndpoint
    completion_window: str = Field(max_length=20)
    # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def _batches(ctx: ApiContext) -> BatchStore:
    assert ctx.batches is not None  # mounted only with a batch store (crosslogic/api/app.py)
    return ctx.batches


@router.post("/v1/batches", summary="Create a batch", responses=_ERRORS, openapi_extra=json_body(BatchCreate))
async def create_batch(request: Request, ctx: Context) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    body = parse(BatchCreate, await read_json(request, ctx.max_body_bytes))
    if body.metadata and any(len(k) > 64 or len(v) > 512 for k, v in body.metadata.items()):
        raise InvalidRequestError("metadata keys are at most 64 characters, values 512", param="metadata")
    assert ctx.files is not None
    stored = await ctx.files.get(auth.tenant_id, body.input_file_id, param="input_file_id")
    if stored.purpose != "batch":
        raise InvalidRequestError("the input file's purpose must be 'batch'", param="input_file_id")
    batch = await _batches(ctx).create(
        auth.tenant_id, auth.key_id, endpoint=body.endpoint, input_file_id=stored.id,
        completion_window=body.completion_window, metadata=body.metadata, model_scopes=auth.scopes,
    )
    return JSONResponse(batch.openai())


@router.get("/v1/batches", summary="List batches", responses=_ERRORS)
async def list_batches(request: Request, ctx: Context, limit: int = 20, after: str | None = None) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    batches, more = await _batches(ctx).page(auth.tenant_id, limit=check_page_size(limit), after=after)
    return JSONResponse(openai_list([b.openai() for b in batches], more))


@router.get("/v1/batches/{batch_id}", summary="Retrieve a batch", responses=_ERRORS)
async def retrieve_batch(batch_id: str, request: Request, ctx: Context) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    return JSONResponse((await _batches(ctx).get(auth.tenant_id, batch_id)).openai())


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch", responses=_ERRORS)
async def cancel_batch(batch_id: str, request: Request, ctx: Context) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    return JSONResponse((await _batches(ctx).cancel(auth.tenant_id, batch_id)).openai())
