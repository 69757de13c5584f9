"""The build-time VRAM check of serve_config.yaml deployments against registered templates."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from test_registry_vram import LLAMA_70B

from crosslogic.config import AppConfig
from crosslogic.errors import ConfigError
from crosslogic.registry import repository
from crosslogic.registry.placement import check_app_placements, registered_templates


def app_config(*models: dict[str, Any]) -> AppConfig:
    return AppConfig.model_validate({"models": list(models)})


def gpu_model(name: str, **engine_kwargs: Any) -> dict[str, Any]:
    return {
        "served_name": name,
        "source": "meta-llama/Llama-3.1-70B-Instruct",
        "engine": {"dtype": "auto", "max_model_len": 8192, "engine_kwargs": engine_kwargs},
        "ray_actor_options": {"num_gpus": 1, "accelerator_type": "H100"},
    }


def test_70b_on_one_h100_fails_the_build_with_numbers() -> None:
    config = app_config(gpu_model("big"))
    with pytest.raises(ConfigError, match=r"serve_config.yaml: .*135.9 GiB per GPU.*72.0 GiB usable"):
        check_app_placements(config, {"big": LLAMA_70B})


def test_tensor_parallel_deployment_passes_and_others_are_skipped() -> None:
    cpu = {"served_name": "tiny", "source": "smollm2-135m"}
    config = app_config(gpu_model("big", tensor_parallel_size=4), gpu_model("unregistered"), cpu)
    checks = check_app_placements(config, {"big": LLAMA_70B})
    assert checks[0].estimate is not None and checks[0].estimate.tensor_parallel_size == 4
    assert [c.skipped for c in checks] == [None, "not registered", "no GPU requested"]


async def test_templates_come_from_the_registry(db_pool: asyncpg.Pool) -> None:
    name = f"big-{uuid.uuid4().hex[:6]}"
    await repository.create_model(db_pool, LLAMA_70B.model_copy(update={"served_name": name}))
    config = app_config(gpu_model(name), {"served_name": "other", "source": "x"})
    templates = await registered_templates(db_pool, config)
    assert list(templates) == [name]
    with pytest.raises(ConfigError):
        check_app_placements(config, templates)
