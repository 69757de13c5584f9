"""GET /health (alive) and GET /ready (every dependency, with detail; 503 when not ready)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from crosslogic.api.context import Context
from crosslogic.api.readiness_probes import service_readiness

router = APIRouter()


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness with per-dependency detail")
async def ready(ctx: Context) -> JSONResponse:
    # The readiness watcher evaluates the same function: what pages is what /ready says.
    readiness = await service_readiness(ctx.gateway.readiness, ctx.probes, ctx.limiter)
    return JSONResponse(readiness.model_dump(mode="json"), status_code=200 if readiness.ready else 503)
