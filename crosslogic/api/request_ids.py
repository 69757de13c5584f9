"""Request ids: the server's, which keys money and idempotency, and the client's, which is metadata.

Every request gets a fresh server id (`req_<32 hex>`): the usage ledger's primary key, the rate
limiter's admission and lease ids, the engine's request id, the audit log's. A client chooses
nothing that is unique server-side (a chosen id once let later requests with the same id go
unbilled): the id it sends — `x-client-request-id`, as OpenAI's API accepts it, or `x-request-id`
for older clients — is stored beside the server's (non-unique) and echoed as `x-client-request-id`.
The response's `x-request-id` is the server's, as OpenAI's is.

Ray Serve's own RequestIdMiddleware (in its proxy, or in each replica's HTTP server under the HAProxy
ingress) wraps the app and appends `x-request-id` — the request's header, the client's if it sent
one — to every response. `edge_middlewares` is the callback Serve applies outside it
(RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): it replaces the client's header by a server id before
Serve sees it and leaves exactly one `x-request-id` on the response.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crosslogic.errors import InvalidRequestError

REQUEST_ID = "x-request-id"
CLIENT_REQUEST_ID = "x-client-request-id"
# The value for RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH (see the module docstring).
EDGE_CALLBACK = "crosslogic.api.request_ids.edge_middlewares"
SERVER_ID = re.compile(r"req_[0-9a-f]{32}\Z")
MAX_CLIENT_ID = 512
# Printable ASCII, as OpenAI requires of x-client-request-id: it is echoed in a header and stored.
_CLIENT_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_CLIENT_ID}}}\Z")


def mint_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def client_request_id(
    headers: Headers, names: tuple[str, ...] = (CLIENT_REQUEST_ID, REQUEST_ID)
) -> str | None:
    """The client's own id, if it sent one; InvalidRequestError (400, param = the header) if unusable."""
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        value = value.strip()
        if not value:
            continue
        if not _CLIENT_ID.match(value):
            raise InvalidRequestError(
                f"invalid '{name}' header: use 1 to {MAX_CLIENT_ID} printable ASCII characters",
                param=name, code="invalid_header",
            )
        return value
    return None


def request_ids(request: Any) -> tuple[str, str | None]:
    """(server id, client id) of a request the middleware saw (a Starlette `Request`)."""
    state = request.scope.get("state") or {}
    server_id = state.get("request_id")
    if not server_id:  # the app was built without the middleware: still never the client's id
        server_id = mint_request_id()
        request.scope.setdefault("state", {})["request_id"] = server_id
    return server_id, state.get("client_request_id")


class RequestIdMiddleware:
    """Mints the server id, checks the client's, rewrites the request's headers to
    `x-request-id: <server id>` and `x-client-request-id: <client id>` (the ids also go in
    `scope["state"]`), and puts both on the response.

    `trust_upstream`: an outer instance of this middleware (`edge_middlewares`) already ran in this
    process, so a server-shaped `x-request-id` is its id; otherwise the header is the client's.
    `edge`: this is that outer instance; on the response the app's `x-request-id` (the first one)
    wins over what Serve appended after it.
    """

    def __init__(self, app: ASGIApp, *, trust_upstream: bool = False, edge: bool = False) -> None:
        self._app = app
        self._trust_upstream = trust_upstream
        self._edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = MutableHeaders(scope=scope)
        upstream = headers.get(REQUEST_ID, "") if self._trust_upstream else ""
        trusted = SERVER_ID.match(upstream) is not None
        server_id = upstream if trusted else mint_request_id()
        # Behind the edge, x-request-id is the edge's id and the client's is already moved aside.
        names = (CLIENT_REQUEST_ID,) if trusted else (CLIENT_REQUEST_ID, REQUEST_ID)
        try:
            client_id = client_request_id(headers, names)
        except InvalidRequestError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status_code, headers={REQUEST_ID: server_id})
            await response(scope, receive, send)
            return
        del headers[REQUEST_ID]
        del headers[CLIENT_REQUEST_ID]
        headers[REQUEST_ID] = server_id
        if client_id is not None:
            headers[CLIENT_REQUEST_ID] = client_id
        state = scope.setdefault("state", {})
        state["request_id"] = server_id
        state["client_request_id"] = client_id

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                ids = out.getlist(REQUEST_ID)
                out[REQUEST_ID] = ids[0] if self._edge and ids else server_id
                if client_id is not None:
                    out[CLIENT_REQUEST_ID] = client_id
            await send(message)

        await self._app(scope, receive, send_with_ids)


def edge_middlewares() -> list[Middleware]:
    """Ray Serve's HTTP callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH = EDGE_CALLBACK)."""
    return [Middleware(RequestIdMiddleware, edge=True)]
