"""GET /health (alive) and GET /ready (every dependency, with detail; 503 when not ready)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from crosslogic.api.context import Context
from crosslogic.api.gateway import DependencyStatus

router = APIRouter()


@router.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness with per-dependency detail")
async def ready(ctx: Context) -> JSONResponse:
    readiness = await ctx.gateway.readiness()
    if ctx.limiter is not None:
        ok, detail = ctx.limiter.status()
        readiness.dependencies["ratelimit"] = DependencyStatus(ok=ok, detail=detail)
        readiness.ready = readiness.ready and ok
    return JSONResponse(readiness.model_dump(mode="json"), status_code=200 if readiness.ready else 503)
