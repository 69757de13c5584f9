"""Write a region's Serve config from its environment: `python -m crosslogic.cloud.render_region_config`.

Runs on the region's node (cluster_configs/region-gpu.yaml, `run`), where SkyPilot has set the envs
`crosslogic cluster up` filled. The repository's region_config.yaml is the template: its Serve
options, router, agent interval and clock skew are kept; the region's name, models, gateway listener
and control plane come from the environment. The result is checked against RegionAppConfig before
it is written, so a bad env fails here with a message instead of inside a Serve replica.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from crosslogic.cloud.task_spec import REPO_ROOT
from crosslogic.regions.app_config import RegionAppConfig

TEMPLATE = REPO_ROOT / "region_config.yaml"
REGION_APP_IMPORT = "deployments.region_app:build_region_app"


class RenderError(ValueError):
    pass


def parse_models(text: str, gpus_per_replica: int) -> list[dict[str, Any]]:
    """`name=source,source2` -> model entries, each replica on `gpus_per_replica` GPUs."""
    models = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, source = item.partition("=")
        name, source = (name.strip(), source.strip()) if sep else (item, item)
        if not name or not source:
            raise RenderError(f"CROSSLOGIC_MODELS entry {item!r}: expected served_name=source or source")
        engine: dict[str, Any] = {}
        if gpus_per_replica > 1:
            engine["engine_kwargs"] = {"tensor_parallel_size": gpus_per_replica}
        models.append({
            "served_name": name,
            "source": source,
            "ray_actor_options": {"num_gpus": gpus_per_replica},
            "engine": engine,
        })
    if not models:
        raise RenderError("CROSSLOGIC_MODELS names no model")
    if len({m["served_name"] for m in models}) != len(models):
        raise RenderError("CROSSLOGIC_MODELS names a served model twice")
    return models


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise RenderError(f"{name} is not set")
    return value


def _optional(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def render(env: Mapping[str, str], template: dict[str, Any]) -> dict[str, Any]:
    """The Serve config for the region described by `env`, built on `template`."""
    config = copy.deepcopy(template)
    apps = [a for a in config.get("applications") or [] if a.get("import_path") == REGION_APP_IMPORT]
    if len(apps) != 1:
        raise RenderError(f"the template must hold exactly one application of {REGION_APP_IMPORT}")
    args = apps[0].setdefault("args", {})
    try:
        gpus = int(env.get("CROSSLOGIC_GPUS_PER_REPLICA", "1") or "1")
        port = int(env.get("CROSSLOGIC_GATEWAY_PORT", "8443") or "8443")
    except ValueError as exc:
        raise RenderError(f"CROSSLOGIC_GPUS_PER_REPLICA / CROSSLOGIC_GATEWAY_PORT: {exc}") from None
    if gpus < 1:
        raise RenderError("CROSSLOGIC_GPUS_PER_REPLICA must be at least 1")
    args["region"] = _required(env, "CROSSLOGIC_REGION")
    args["models"] = parse_models(_required(env, "CROSSLOGIC_MODELS"), gpus)
    # The one listener of a region that others reach: on all interfaces, at the port the task opens.
    gateway = {k: v for k, v in (args.get("gateway") or {}).items() if k not in _GATEWAY_FROM_ENV.values()}
    gateway.update({"host": "0.0.0.0", "port": port})
    for env_name, key in _GATEWAY_FROM_ENV.items():
        if value := _optional(env, env_name):
            gateway[key] = value
    args["gateway"] = gateway
    agent = dict(args.get("agent") or {})
    agent["control_plane_url"] = _required(env, "CROSSLOGIC_CONTROL_PLANE_URL")
    if ca_bundle := _optional(env, "CROSSLOGIC_CONTROL_PLANE_CA_BUNDLE"):
        agent["tls"] = {**(agent.get("tls") or {}), "ca_bundle": ca_bundle}
    args["agent"] = agent
    try:
        RegionAppConfig.model_validate(args)
    except ValidationError as exc:
        raise RenderError(f"the rendered region config is invalid: {exc}") from None
    return config


_GATEWAY_FROM_ENV = {
    "CROSSLOGIC_GATEWAY_ADVERTISE_URL": "advertise_url",
    "CROSSLOGIC_GATEWAY_TLS_CERTFILE": "tls_certfile",
    "CROSSLOGIC_GATEWAY_TLS_KEYFILE": "tls_keyfile",
    "CROSSLOGIC_GATEWAY_CLIENT_CA": "client_ca",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosslogic.cloud.render_region_config")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--out", type=Path, help="where to write it (default: stdout)")
    args = parser.parse_args(argv)
    try:
        config = render(os.environ, yaml.safe_load(args.template.read_text()))
    except (RenderError, OSError) as exc:
        print(f"render_region_config: {exc}", file=sys.stderr)
        return 1
    text = "# Rendered by crosslogic.cloud.render_region_config from the environment.\n" + yaml.safe_dump(
        config, sort_keys=False
    )
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
