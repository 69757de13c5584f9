"""Peers measured beside CrossLogic in `serving_overhead.py`: LiteLLM's proxy in front of bare vLLM.

LiteLLM lives in its own venv (`make litellm-env`, .venv-litellm): its pins are not vLLM's, and it is
a peer we measure, never a dependency. It runs as its proxy is usually run for one upstream: one
worker, a master key (a string compare; virtual keys need its Prisma database, whose engine binaries
it downloads at run time, which this machine cannot), the model as an OpenAI-compatible upstream.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml
from process_probe import TAG
from serving_targets import REPO, server_process

from crosslogic.localstack.ray_cluster import free_port

LITELLM_VENV = REPO / ".venv-litellm"
LITELLM_KEY = "sk-litellm-bench"


def litellm_binary() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `make litellm-env` first (LiteLLM in its own venv)")
    return binary


@contextlib.contextmanager
def litellm_proxy(upstream_base: str | list[str], model: str, workdir: Path, tag: str) -> Iterator[str]:
    """LiteLLM's proxy forwarding `model` to the OpenAI-compatible server at `upstream_base` (…/v1),
    or routing over several (one deployment each, LiteLLM's default routing strategy)."""
    port = free_port()
    bases = [upstream_base] if isinstance(upstream_base, str) else upstream_base
    config = {
        "model_list": [{"model_name": model, "litellm_params": {
            # `openai/`: the upstream speaks OpenAI's API; parameters LiteLLM does not know
            # (vLLM's `ignore_eos`) are passed through in the body as the client sent them.
            "model": f"openai/{model}", "api_base": base, "api_key": "EMPTY"}} for base in bases],
        "general_settings": {"master_key": LITELLM_KEY},
        "litellm_settings": {"drop_params": False, "telemetry": False},
    }
    config_path = workdir / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cmd = [str(litellm_binary()), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]
    # No telemetry or hub lookups from a benchmark (the machine has no internet either way).
    env = {**os.environ, TAG: tag, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "DISABLE_SCHEMA_UPDATE": "True", "NO_DOCS": "True"}
    env.pop("DATABASE_URL", None)  # LiteLLM would try to run its Prisma migrations against ours
    health = f"http://127.0.0.1:{port}/health/liveliness"
    with server_process("LiteLLM", cmd, env, workdir / "litellm.log", health, 300, tag):
        yield f"http://127.0.0.1:{port}/v1"
