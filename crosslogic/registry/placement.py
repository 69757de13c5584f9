"""The VRAM check at application build time: each deployment in `serve_config.yaml` against its
registered template and the accelerator its replicas ask Ray for.

A deployment is checked when it requests GPUs (`ray_actor_options.num_gpus > 0`) with an
`accelerator_type` and its served_name is registered. The deployment's engine settings override the
template: `engine.max_model_len`, `engine.dtype` (unless "auto"), and `engine_kwargs`
`tensor_parallel_size`. The sequence budget is 1 full-length sequence — what vLLM itself needs to start —
unless `budget_seqs` says otherwise; vLLM fits `max_num_seqs` into whatever KV space remains.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from crosslogic.config import AppConfig, ModelDeploymentConfig
from crosslogic.errors import ConfigError, InvalidRequestError
from crosslogic.registry import repository
from crosslogic.registry.templates import ModelTemplate
from crosslogic.registry.vram import BYTES_PER_WEIGHT, VramEstimate, check_fits
from crosslogic.storage.executor import Executor

# vLLM's dtype spellings that differ from ours.
_DTYPE_ALIASES = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16"}


class PlacementCheck(BaseModel):
    served_name: str
    accelerator: str | None
    estimate: VramEstimate | None
    # Why no check ran (no GPU requested, no accelerator_type, not registered).
    skipped: str | None = None


def effective_template(deployment: ModelDeploymentConfig, registered: ModelTemplate) -> ModelTemplate:
    updates: dict[str, object] = {}
    engine = deployment.engine
    if engine.max_model_len is not None:
        updates["max_model_len"] = engine.max_model_len
    dtype = _DTYPE_ALIASES.get(engine.dtype, engine.dtype)
    if dtype in BYTES_PER_WEIGHT:
        updates["dtype"] = dtype
    tp = engine.engine_kwargs.get("tensor_parallel_size")
    if isinstance(tp, int) and tp > 0:
        updates["tensor_parallel_size"] = tp
    return registered.model_copy(update=updates)


def check_deployment(
    deployment: ModelDeploymentConfig, registered: ModelTemplate | None, *, budget_seqs: int = 1
) -> PlacementCheck:
    options = deployment.ray_actor_options
    raw_accelerator = options.get("accelerator_type")
    accelerator = raw_accelerator if isinstance(raw_accelerator, str) else None
    name = deployment.served_name

    def skipped(reason: str) -> PlacementCheck:
        return PlacementCheck(served_name=name, accelerator=accelerator, estimate=None, skipped=reason)

    if not options.get("num_gpus"):
        return skipped("no GPU requested")
    if accelerator is None:
        return skipped("no accelerator_type")
    if registered is None:
        return skipped("not registered")
    template = effective_template(deployment, registered)
    try:
        estimate = check_fits(template, accelerator, max_num_seqs=budget_seqs)
    except InvalidRequestError as exc:
        raise ConfigError(f"serve_config.yaml: {exc.message}") from exc
    return PlacementCheck(served_name=name, accelerator=accelerator, estimate=estimate)


def check_app_placements(
    config: AppConfig, templates: Mapping[str, ModelTemplate], *, budget_seqs: int = 1
) -> list[PlacementCheck]:
    """Raise ConfigError (stating the numbers) for the first deployment that cannot fit."""
    return [
        check_deployment(m, templates.get(m.served_name), budget_seqs=budget_seqs) for m in config.models
    ]


async def registered_templates(db: Executor, config: AppConfig) -> dict[str, ModelTemplate]:
    found: dict[str, ModelTemplate] = {}
    for deployment in config.models:
        record = await repository.get_model_by_name(db, deployment.served_name)
        if record is not None:
            found[deployment.served_name] = record
    return found
