"""/v1/files: upload (multipart, purpose `batch`), retrieve, content, list and delete, as the official
client's `client.files.*` call them. Files belong to the tenant that uploaded them (or whose batch
produced them): any other caller gets a 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from crosslogic.api.context import ApiContext, Context
from crosslogic.api.errors import error_responses
from crosslogic.batches.files import FileStore
from crosslogic.errors import InvalidRequestError, PayloadTooLargeError
from crosslogic.storage.pagination import check_page_size

router = APIRouter()
_ERRORS = error_responses(400, 401, 404, 413)
# Room for the multipart framing and the other fields around the file itself.
_FORM_OVERHEAD_BYTES = 64 * 1024


def _files(ctx: ApiContext) -> FileStore:
    assert ctx.files is not None  # mounted only with a file store (crosslogic/api/app.py)
    return ctx.files


@router.post("/v1/files", summary="Upload a file", responses=_ERRORS)
async def upload_file(request: Request, ctx: Context) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    store = _files(ctx)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > store.max_bytes + _FORM_OVERHEAD_BYTES:
        raise PayloadTooLargeError(f"file exceeds the limit of {store.max_bytes} bytes", param="file")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError("upload a file as multipart/form-data with 'file' and 'purpose'", param="file")
    form = await request.form(max_files=1, max_fields=8)
    try:
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose != "batch":
            raise InvalidRequestError("'purpose' must be 'batch'", param="purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("'file' is required (a JSONL file)", param="file")
        data = await upload.read(store.max_bytes + 1)
        stored = await store.create(auth.tenant_id, upload.filename or "file.jsonl", "batch", data)
    finally:
        await form.close()
    return JSONResponse(stored.openai())


@router.get("/v1/files", summary="List files", responses=_ERRORS)
async def list_files(
    request: Request, ctx: Context, purpose: str | None = None, limit: int = 100, after: str | None = None,
    order: str = "desc",
) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    if order != "desc":
        raise InvalidRequestError("only order=desc is supported", param="order")
    files, more = await _files(ctx).page(
        auth.tenant_id, purpose=purpose, limit=check_page_size(limit), after=after)
    return JSONResponse(openai_list([f.openai() for f in files], more))


@router.get("/v1/files/{file_id}", summary="Retrieve a file", responses=_ERRORS)
async def retrieve_file(file_id: str, request: Request, ctx: Context) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    return JSONResponse((await _files(ctx).get(auth.tenant_id, file_id)).openai())


@router.get("/v1/files/{file_id}/content", summary="Retrieve file content", responses=_ERRORS)
async def file_content(file_id: str, request: Request, ctx: Context) -> Response:
    auth = await ctx.authenticate(request, None)
    data = await _files(ctx).content(auth.tenant_id, file_id)
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", summary="Delete a file", responses=_ERRORS)
async def delete_file(file_id: str, request: Request, ctx: Context) -> JSONResponse:
    auth = await ctx.authenticate(request, None)
    await _files(ctx).delete(auth.tenant_id, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


def openai_list(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """A page of a list as OpenAI answers one (files and batches alike)."""
    return {"object": "list", "data": data, "has_more": more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
