"""POST /v1/responses, GET and DELETE /v1/responses/{response_id}, GET .../input_items: OpenAI's
Responses API.

Creating a response takes the chat path (key, limits, routing, engine, relay, metering: one usage
row per response, keyed by its request id); crosslogic/responses/turn.py adds continuation and
storage. Stored responses belong to the tenant that made them: any other caller gets a 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api.context import ApiContext, Context, RequestId
from crosslogic.api.endpoint import serve_openai_request
from crosslogic.api.errors import error_responses
from crosslogic.api.openapi_bodies import ERRORS, json_body
from crosslogic.errors import InvalidRequestError
from crosslogic.protocol.responses import ResponsesRequest
from crosslogic.responses.input_items import Order, listing
from crosslogic.responses.store import ResponseStore
from crosslogic.responses.turn import ResponsesTurn

router = APIRouter()
_LOOKUP_ERRORS = error_responses(400, 401, 404)


def _store(ctx: ApiContext) -> ResponseStore:
    assert ctx.responses is not None  # the router is only mounted with a store (crosslogic/api/app.py)
    return ctx.responses


@router.post(
    "/v1/responses", summary="Create a model response", response_model=None,
    openapi_extra=json_body(ResponsesRequest), responses=ERRORS,
)
async def create_response(request: Request, ctx: Context, request_id: RequestId) -> JSONResponse | StreamingResponse:
    return await serve_openai_request(
        request, ctx, request_id, schema=ResponsesRequest, endpoint="responses", task="generate",
        hooks=ResponsesTurn(_store(ctx), request_id),
    )


@router.get("/v1/responses/{response_id}", summary="Retrieve a model response", responses=_LOOKUP_ERRORS)
async def retrieve_response(response_id: str, request: Request, ctx: Context, stream: bool = False) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    if stream:
        # OpenAI replays the events of a background response; there are none here.
        raise InvalidRequestError(
            "streaming a stored response is not supported; retrieve it without 'stream'",
            param="stream", code="unsupported_parameter",
        )
    stored = await _store(ctx).get(auth.tenant_id, response_id)
    return JSONResponse(stored.response)


@router.get(
    "/v1/responses/{response_id}/input_items", summary="List the input items of a model response",
    responses=_LOOKUP_ERRORS,
)
async def list_input_items(
    response_id: str, request: Request, ctx: Context, limit: int = 20, order: Order = "desc",
    after: str | None = None, before: str | None = None, include: list[str] | None = Query(default=None),
) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    if include:  # OpenAI's extra fields (e.g. file search results): none of them exist here
        raise InvalidRequestError("'include' is not supported for input items", param="include",
                                  code="unsupported_parameter")
    stored = await _store(ctx).get(auth.tenant_id, response_id)
    return JSONResponse(listing(stored, limit=limit, order=order, after=after, before=before))


@router.delete("/v1/responses/{response_id}", summary="Delete a model response", responses=_LOOKUP_ERRORS)
async def delete_response(response_id: str, request: Request, ctx: Context) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    await _store(ctx).delete(auth.tenant_id, response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
