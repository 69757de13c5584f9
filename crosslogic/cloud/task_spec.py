"""The SkyPilot tasks in cluster_configs/ as data: versions, envs, cluster names and the overrides
`crosslogic cluster up` applies. Stdlib + yaml only: shared by the driver (in .venv-cloud, beside
SkyPilot), the main CLI and the tests, none of which may pull the other's dependencies.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "cluster_configs"
VERSIONS_FILE = "versions.yaml"
REGION_TASK = "region-gpu.yaml"
CONTROL_PLANE_TASK = "control-plane.yaml"

CLUSTER_PREFIX = "crosslogic-"
CONTROL_PLANE_CLUSTER = "crosslogic-control-plane"
# Same rule as crosslogic/regions/signing.py's REGION_NAME_PATTERN (a test keeps them equal; this
# module may not import that package's dependencies into .venv-cloud).
REGION_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
# NAME or NAME:COUNT, SkyPilot's accelerator spelling (H100:1, A100-80GB:8, tpu-v5e-8).
ACCELERATOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9]+(\.[0-9]+)?)?$"

# versions.yaml key -> the env a task YAML declares (null) and `cluster up` fills.
VERSION_ENVS: dict[str, str] = {
    "python": "CROSSLOGIC_PYTHON_VERSION",
    "ray": "CROSSLOGIC_RAY_VERSION",
    "vllm": "CROSSLOGIC_VLLM_VERSION",
    "torch": "CROSSLOGIC_TORCH_VERSION",
    "crosslogic": "CROSSLOGIC_VERSION",
}
REGION_ENV = "CROSSLOGIC_REGION"
CONTROL_PLANE_URL_ENV = "CROSSLOGIC_CONTROL_PLANE_URL"
REGION_SECRET_ENV = "CROSSLOGIC_REGION_SECRET"
# Secrets taken from the operator's environment when set (never written to a file or printed).
OPTIONAL_SECRETS = ("HF_TOKEN",)


class SpecError(ValueError):
    """A request `cluster up` refuses before SkyPilot sees it; the message is for the operator."""


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping")
    return data


def load_versions(configs_dir: Path = CONFIGS_DIR) -> dict[str, str]:
    raw = load_yaml(configs_dir / VERSIONS_FILE)
    if set(raw) != set(VERSION_ENVS) or not all(isinstance(v, str) and v for v in raw.values()):
        raise SpecError(
            f"{configs_dir / VERSIONS_FILE}: needs exactly {', '.join(VERSION_ENVS)} as quoted strings"
        )
    return {key: raw[key] for key in VERSION_ENVS}


def version_envs(versions: dict[str, str]) -> dict[str, str]:
    return {VERSION_ENVS[key]: value for key, value in versions.items()}


def check_region(region: str) -> str:
    if not re.match(REGION_NAME_PATTERN, region):
        raise SpecError(f"region {region!r}: lowercase letters, digits and '-', at most 63 characters")
    return region


def cluster_name(region: str) -> str:
    return CLUSTER_PREFIX + check_region(region)


def region_of(cluster: str) -> str | None:
    """The CrossLogic region a cluster serves, None for the control plane or a foreign cluster."""
    if cluster == CONTROL_PLANE_CLUSTER or not cluster.startswith(CLUSTER_PREFIX):
        return None
    return cluster[len(CLUSTER_PREFIX):]


def parse_env_assignments(items: list[str]) -> dict[str, str]:
    envs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise SpecError(f"--env {item!r}: expected KEY=VALUE")
        envs[key] = value
    return envs


def split_accelerators(values: list[str]) -> list[str]:
    """`--accelerators H100:1,A100-80GB:1 --accelerators L40S:1` -> the ordered list, checked."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    for name in names:
        if not re.match(ACCELERATOR_PATTERN, name):
            raise SpecError(f"accelerator {name!r}: expected NAME or NAME:COUNT, e.g. H100:1")
    if len(set(names)) != len(names):
        raise SpecError("--accelerators lists a GPU twice")
    return names


def yaml_accelerators(resources: dict[str, Any]) -> list[str]:
    """The accelerators a task's `ordered` list names, in order, once each."""
    seen: list[str] = []
    for candidate in resources.get("ordered") or []:
        name = candidate.get("accelerators")
        if isinstance(name, str) and name not in seen:
            seen.append(name)
    return seen


@dataclass
class Overrides:
    """What the command line changes in a task before SkyPilot reads it."""

    accelerators: list[str] = field(default_factory=list)  # empty: the YAML's own list
    spot: bool = False
    infra: str | None = None  # SkyPilot infra: aws, aws/eu-west-1, k8s/my-context ...
    workdir: str | None = None


def apply_overrides(task: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """A copy of `task` with the command line's resources applied.

    Accelerators become SkyPilot's `ordered` candidates: with --spot each GPU as spot, then the same
    GPU on demand (spot with on-demand fallback); without, on demand only. --cloud pins `infra`
    for every candidate and replaces an `any_of` list of clouds.
    """
    task = copy.deepcopy(task)
    resources = task.setdefault("resources", {})
    accelerators = overrides.accelerators or yaml_accelerators(resources)
    if accelerators:
        spot_choices = (True, False) if overrides.spot else (False,)
        resources.pop("any_of", None)
        resources["ordered"] = [
            {"accelerators": name, "use_spot": spot} for name in accelerators for spot in spot_choices
        ]
    elif overrides.spot:
        resources["use_spot"] = True
    if overrides.infra:
        for candidates in ("any_of", "ordered"):
            kept = [
                {k: v for k, v in c.items() if k not in ("infra", "cloud", "region", "zone")}
                for c in resources.get(candidates) or []
            ]
            kept = [c for c in kept if c]
            if kept:
                resources[candidates] = kept
            else:
                resources.pop(candidates, None)
        resources["infra"] = overrides.infra
    if overrides.workdir:
        task["workdir"] = overrides.workdir
    return task


def declared_envs(task: dict[str, Any]) -> dict[str, Any]:
    envs = task.get("envs") or {}
    return dict(envs)


def declared_secrets(task: dict[str, Any]) -> list[str]:
    return list((task.get("secrets") or {}).keys())
