"""The HTTP application: OpenAI-compatible /v1 routes, health, and error handling.

Built per process by `build_api` with its dependencies injected, so it runs under Ray Serve's ingress
and, in tests, under any ASGI server with no Ray at all.
"""

from __future__ import annotations

from fastapi import FastAPI

from crosslogic.api import (
    routes_batches,
    routes_embeddings,
    routes_files,
    routes_generation,
    routes_health,
    routes_models,
    routes_responses,
)
from crosslogic.api.context import ApiContext
from crosslogic.api.errors import install_error_handlers
from crosslogic.api.request_ids import RequestIdMiddleware
from crosslogic.telemetry.middleware import RequestMetricsMiddleware
from crosslogic.tracing.middleware import TracingMiddleware


def build_api(context: ApiContext, *, trust_edge_request_id: bool = False) -> FastAPI:
    """`trust_edge_request_id`: Serve runs `request_ids.edge_middlewares` in front of this app in
    this process, so the `x-request-id` it hands over is already the server's (one id end to end,
    in Serve's logs too); otherwise the app mints its own and never reads the client's as one."""
    app = FastAPI(
        title="CrossLogic",
        description="OpenAI-compatible multi-tenant LLM inference",
        version="0.1.0",
    )
    app.state.api = context
    install_error_handlers(app)
    for module in (routes_models, routes_generation, routes_embeddings, routes_health):
        app.include_router(module.router)
    if context.responses is not None:  # the Responses API needs its store (PostgreSQL)
        app.include_router(routes_responses.router)
    if context.files is not None and context.batches is not None:  # the Batch API (PostgreSQL)
        app.include_router(routes_files.router)
        app.include_router(routes_batches.router)
    app.add_middleware(RequestIdMiddleware, trust_upstream=trust_edge_request_id)
    app.add_middleware(RequestMetricsMiddleware, sink=context.metrics)  # sees every status
    if context.tracer is not None:  # outermost: the root span covers the whole answer
        app.add_middleware(TracingMiddleware, tracer=context.tracer)
    return app
