"""Which `Engine` a model's replica runs: vLLM, or the simulator when its config says so explicitly."""

from __future__ import annotations

from collections.abc import Callable

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.base import Engine
from crosslogic.settings import Settings


def build_engine(
    config: ModelDeploymentConfig, settings: Settings, *, progress: Callable[[str], None], replica_rank: int = 0
) -> Engine:
    """The engine for `config` (not started). Only `engine.kind: simulator` gives the simulator."""
    if config.engine.kind == "simulator":
        from crosslogic.engine.simulator import SimulatorEngine

        return SimulatorEngine(config, replica_rank=replica_rank)
    from crosslogic.devmodels.prepare import resolve_model_source
    from crosslogic.engine.vllm_engine import VLLMEngine

    return VLLMEngine(config, resolve_model_source(config.source, settings, progress=progress))
