"""Exception handlers that give every HTTP failure OpenAI's error shape.

`{"error": {"message", "type", "param", "code"}}` for CrossLogic errors, request validation failures
(400, `param` = the failing field path such as `messages.0.role`), unknown routes and methods, and — as
a last resort — unexpected exceptions (500 `internal_error`, traceback logged server-side only).
Shared by the /v1 and /admin/v1 APIs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from crosslogic.api.request_log import logging_errors
from crosslogic.errors import CrossLogicError, ErrorBody, InternalError, InvalidRequestError

log = logging.getLogger("crosslogic.api.errors")

# Where FastAPI says a value came from; not part of the field path a client sees.
_LOCATION_ROOTS = frozenset({"body", "query", "path", "header", "cookie"})
_BAD_REQUEST = ("invalid_request_error", "bad_request")
_HTTP_CODES = {
    401: ("invalid_request_error", "unauthorized"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


def error_response(error: CrossLogicError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers or None)


def field_path(loc: Sequence[Any]) -> str | None:
    parts = [str(part) for part in loc]
    if parts and parts[0] in _LOCATION_ROOTS:
        parts = parts[1:]
    return ".".join(parts) or None


def validation_error(errors: Sequence[Any]) -> InvalidRequestError:
    """The first validation failure, as a 400 a client can act on."""
    if not errors:
        return InvalidRequestError("invalid request")
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid" or (loc == ("body",) and isinstance(first.get("input"), bytes)):
        return InvalidRequestError(
            "request body is not valid JSON (send Content-Type: application/json)", code="invalid_json"
        )
    param = field_path(loc)
    message = str(first.get("msg", "invalid value"))
    if kind == "missing":
        message = f"missing required parameter '{param}'" if param else "missing request body"
    elif kind == "extra_forbidden":
        message = f"unrecognized parameter '{param}'"
    elif param:
        message = f"invalid value for '{param}': {message}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return InvalidRequestError(message, param=param)


async def _crosslogic_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CrossLogicError)
    if exc.status_code >= 500:
        log.error("request %s %s failed: %r", request.method, request.url.path, exc)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc.errors()))


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    fallback = ("server_error", "internal_error") if exc.status_code >= 500 else _BAD_REQUEST
    error_type, code = _HTTP_CODES.get(exc.status_code, fallback)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # The client hung up before its body was complete: its doing, not a server fault (nothing was
    # admitted or sent to an engine yet). Answered for the record; nobody is there to read it.
    log.info("client left %s %s before sending its whole body", request.method, request.url.path)
    body = {"error": {"message": "the client closed the connection before the request body was complete",
                      "type": "invalid_request_error", "param": None, "code": "client_disconnected"}}
    return JSONResponse(body, status_code=400)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(InternalError("internal server error"))


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting OpenAI-shaped errors for these statuses."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS.get(status, "Error")}
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "Invalid request (`param` names the failing field)",
    401: "Missing, invalid or expired credentials",
    403: "Credentials lack the required permission",
    404: "Unknown id or route",
    409: "Conflicts with an existing resource",
}


_DOCUMENTED_400 = {
    "description": _DESCRIPTIONS[400],
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def _document_400_not_422(app: FastAPI) -> None:
    # FastAPI documents validation failures as 422 with its own body; we answer 400 in OpenAI shape.
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_schema()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            if "ErrorBody" not in components:
                body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components["ErrorBody"] = body
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses.setdefault("400", _DOCUMENTED_400)
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    # Each wrapped so a /v1 request answered with an error still gets its request log line.
    app.add_exception_handler(CrossLogicError, logging_errors(_crosslogic_error))
    app.add_exception_handler(RequestValidationError, logging_errors(_validation_error))
    app.add_exception_handler(StarletteHTTPException, logging_errors(_http_exception))
    app.add_exception_handler(ClientDisconnect, logging_errors(_client_disconnect))
    app.add_exception_handler(Exception, logging_errors(_unexpected))
    _document_400_not_422(app)
