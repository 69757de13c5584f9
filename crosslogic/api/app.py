"""The HTTP application: OpenAI-compatible /v1 routes, health, and error handling.

Built per process by `build_api` with its dependencies injected, so it runs under Ray Serve's ingress
and, in tests, under any ASGI server with no Ray at all.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crosslogic.api import routes_embeddings, routes_generation, routes_health, routes_models
from crosslogic.api.context import ApiContext
from crosslogic.api.errors import install_error_handlers


class RequestIdMiddleware:
    """Give every request an id and echo it as `x-request-id` on every response.

    Under Ray Serve the proxy already does both; this is for running the app standalone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = MutableHeaders(scope=scope)
        request_id = headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
        if "x-request-id" not in headers:
            headers.append("x-request-id", request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        await self._app(scope, receive, send_with_id)


def build_api(context: ApiContext, *, echo_request_id: bool = True) -> FastAPI:
    app = FastAPI(
        title="CrossLogic",
        description="OpenAI-compatible multi-tenant LLM inference",
        version="0.1.0",
    )
    app.state.api = context
    install_error_handlers(app)
    for module in (routes_models, routes_generation, routes_embeddings, routes_health):
        app.include_router(module.router)
    if echo_request_id:
        app.add_middleware(RequestIdMiddleware)
    return app
