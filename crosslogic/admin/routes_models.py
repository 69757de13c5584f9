"""`/admin/v1/models`: the model registry, with the VRAM each template needs."""

# No `from __future__ import annotations`: FastAPI must resolve the route-local Annotated aliases.
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field

from crosslogic.admin.deps import AdminCall, AdminDeps, Deleted, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.api.errors import error_responses
from crosslogic.audit.log import audited
from crosslogic.registry import repository
from crosslogic.registry.templates import ModelRecord, ModelTemplate
from crosslogic.registry.vram import (
    ACCELERATORS,
    GIB,
    GPU_MEMORY_UTILIZATION,
    check_fits,
    estimate_vram,
)
from crosslogic.storage.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page


class VramView(BaseModel):
    per_gpu_gib: float = Field(description="Estimated memory per GPU at the template's tensor_parallel_size")
    total_gib: float
    weights_gib: float
    kv_cache_gib: float | None = Field(description="Null when the attention shape is unknown")
    overhead_gib_per_gpu: float
    max_num_seqs: int
    is_lower_bound: bool
    fits_on: list[str] = Field(description="Accelerators with enough usable memory per GPU")


class ModelView(ModelRecord):
    object: str = "model_template"
    vram: VramView


class ModelCreate(ModelTemplate):
    accelerator: str | None = Field(
        default=None, description="Refuse the template unless it fits on this accelerator, e.g. 'A100-80GB'"
    )
    max_num_seqs: int = Field(default=1, ge=1, le=4096, description="Sequence budget for the KV cache")


def model_view(record: ModelRecord, max_num_seqs: int = 1) -> ModelView:
    estimate = estimate_vram(record, max_num_seqs=max_num_seqs)
    fits_on = [
        spec.name
        for spec in ACCELERATORS.values()
        if estimate.per_gpu_bytes <= spec.memory_gib * GIB * GPU_MEMORY_UTILIZATION
    ]
    vram = VramView(
        per_gpu_gib=round(estimate.per_gpu_bytes / GIB, 3),
        total_gib=round(estimate.total_bytes / GIB, 3),
        weights_gib=round(estimate.weights_bytes / GIB, 3),
        kv_cache_gib=None if estimate.kv_cache_bytes is None else round(estimate.kv_cache_bytes / GIB, 3),
        overhead_gib_per_gpu=round(estimate.overhead_bytes_per_gpu / GIB, 3),
        max_num_seqs=max_num_seqs,
        is_lower_bound=estimate.is_lower_bound,
        fits_on=fits_on,
    )
    return ModelView(**record.model_dump(), vram=vram)


def models_router(deps: AdminDeps) -> APIRouter:
    router = APIRouter(prefix="/models", tags=["models"])
    Reader = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.READ))]
    Writer = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.WRITE))]

    @router.get("", summary="List model templates with their VRAM requirement")
    async def list_models(
        _: Reader,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        after: Annotated[UUID | None, Query(description="Id of the last model of the previous page")] = None,
        max_num_seqs: Annotated[int, Query(ge=1, le=4096)] = 1,
    ) -> Page[ModelView]:
        page = await repository.list_models(deps.pool, limit=limit, after=after)
        views = [model_view(record, max_num_seqs) for record in page.data]
        return Page[ModelView](**page.model_dump(exclude={"data"}), data=views)

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        summary="Register a model template (refused when it does not fit the target accelerator)",
        responses=error_responses(409),
    )
    async def create_model(call: Writer, body: ModelCreate) -> ModelView:
        template = ModelTemplate(**body.model_dump(exclude={"accelerator", "max_num_seqs"}))
        async with audited(deps.pool, call.audit, action="model.create", target_type="model") as change:
            change.after = {"request": body.model_dump(mode="json")}
            if body.accelerator is not None:
                check_fits(template, body.accelerator, max_num_seqs=body.max_num_seqs)
            record = await repository.create_model(change.conn, template)
            change.target_id = str(record.id)
            change.after = record
        return model_view(record, body.max_num_seqs)

    @router.get("/{model_id}", summary="Get one model template")
    async def get_model(_: Reader, model_id: UUID) -> ModelView:
        return model_view(await repository.get_model(deps.pool, model_id))

    @router.delete("/{model_id}", summary="Delete a model template")
    async def delete_model(call: Writer, model_id: UUID) -> Deleted:
        async with audited(
            deps.pool, call.audit, action="model.delete", target_type="model", target_id=str(model_id)
        ) as change:
            change.before = await repository.delete_model(change.conn, model_id)
        return Deleted(id=str(model_id), object="model_template.deleted")

    return router
