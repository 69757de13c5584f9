"""Drive SkyPilot through its Python API: `python -m crosslogic.cloud.driver up|down|status`.

Runs ONLY in the operator's .venv-cloud (`make cloud-env`): SkyPilot pins click below what vLLM's
dependencies need, so it never shares an environment with the engine stack. Hence this module
imports stdlib, yaml, sky and crosslogic.cloud.task_spec, nothing else of CrossLogic. The main CLI
(`crosslogic cluster ...`, crosslogic/cli/cluster.py) runs it as a subprocess.

`up --print-task` builds and validates the task exactly as a launch would (SkyPilot parses the YAML
with the env and secret overrides) and prints it instead of launching: no API server, no network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import sky
import yaml

from crosslogic.cloud import task_spec as spec

REDACTED = "<redacted>"


class _TaskDumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as YAML block literals, readable as in cluster_configs/."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_TaskDumper.add_representer(str, _str)


def _print_err(message: str) -> None:
    print(f"crosslogic cluster: {message}", file=sys.stderr)


# --- building the task ----------------------------------------------------------------------------


def task_envs(args: argparse.Namespace, task: dict[str, Any], configs_dir: Path) -> dict[str, str]:
    envs = spec.version_envs(spec.load_versions(configs_dir))
    if not args.control_plane:
        spec.check_region(args.region)
        if not args.control_plane_url:
            raise spec.SpecError(
                "the control plane's URL is needed (--control-plane-url or CROSSLOGIC_URL): "
                "the region's agent registers there"
            )
        envs[spec.REGION_ENV] = spec.check_region(args.region)
        envs[spec.CONTROL_PLANE_URL_ENV] = args.control_plane_url
    extra = spec.parse_env_assignments(args.env)
    pinned = set(spec.VERSION_ENVS.values()) & set(extra)
    if pinned:
        raise spec.SpecError(f"{', '.join(sorted(pinned))} come from cluster_configs/versions.yaml only")
    unknown = set(extra) - set(spec.declared_envs(task))
    if unknown:
        raise spec.SpecError(f"--env {', '.join(sorted(unknown))}: not an env the task declares")
    envs.update(extra)
    return envs


def task_secrets(task: dict[str, Any], *, required: bool) -> list[tuple[str, str]]:
    """The task's secrets from the operator's environment; missing ones are refused for a launch."""
    found, missing = [], []
    for name in spec.declared_secrets(task):
        value = os.environ.get(name)
        if value:
            found.append((name, value))
        else:
            missing.append(name)
    if missing and required:
        hint = " (printed by `crosslogic admin regions create`)" if spec.REGION_SECRET_ENV in missing else ""
        raise spec.SpecError(f"set {', '.join(missing)} in the environment{hint}")
    found += [(name, os.environ[name]) for name in spec.OPTIONAL_SECRETS if os.environ.get(name)]
    return found


def build_task(args: argparse.Namespace) -> tuple[sky.Task, list[str]]:
    """The sky.Task `up` launches, and the names of secrets left unset (only --print-task allows)."""
    configs_dir = Path(args.configs_dir)
    filename = spec.CONTROL_PLANE_TASK if args.control_plane else spec.REGION_TASK
    task = spec.load_yaml(configs_dir / filename)
    overrides = spec.Overrides(
        accelerators=spec.split_accelerators(args.accelerators),
        spot=args.spot,
        infra=args.cloud,
        workdir=str(Path(args.workdir).resolve()),
    )
    if args.control_plane and overrides.accelerators:
        raise spec.SpecError("the control plane needs no accelerators")
    task = spec.apply_overrides(task, overrides)
    envs = task_envs(args, task, configs_dir)
    secrets = task_secrets(task, required=not args.print_task)
    if not args.control_plane and not args.print_task:
        url = envs[spec.CONTROL_PLANE_URL_ENV]
        if any(host in url for host in ("//127.", "//localhost", "//[::1]")):
            raise spec.SpecError(f"{url} is this machine's loopback: a cloud region cannot reach it")
    missing = [name for name in spec.declared_secrets(task) if name not in dict(secrets)]
    sky_task = sky.Task.from_yaml_config(
        task, env_overrides=list(envs.items()), secrets_overrides=secrets or None
    )
    return sky_task, missing


def printable(task: sky.Task, missing_secrets: list[str]) -> dict[str, Any]:
    """The task as SkyPilot parsed it, secrets redacted, internal fields dropped."""
    config = task.to_yaml_config()
    printed = {k: v for k, v in config.items() if not k.startswith("_") and v not in ({}, None)}
    # An unset secret stays in SkyPilot's task as a reference to resolve at launch (`secrets:NAME`).
    secrets = {
        name: REDACTED
        for name in (config.get("secrets") or {})
        if name.removeprefix("secrets:") not in missing_secrets
    }
    secrets.update({name: "<unset>" for name in missing_secrets})
    if secrets:
        printed["secrets"] = secrets
    return printed


# --- commands -------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    task, missing = build_task(args)
    name = spec.CONTROL_PLANE_CLUSTER if args.control_plane else spec.cluster_name(args.region)
    if args.print_task:
        print(f"# cluster: {name}")
        print(yaml.dump(printable(task, missing), Dumper=_TaskDumper, sort_keys=False, width=120), end="")
        if missing:
            _print_err(f"{', '.join(missing)} unset: a launch would refuse")
        return 0
    existing = sky.get(sky.status(cluster_names=[name]))
    if existing:
        _print_err(
            f"cluster {name} exists ({existing[0].status.value}); `crosslogic cluster down` it "
            "first (its run command holds the GPU, so a second launch would only queue)"
        )
        return 1
    print(f"launching {name} (SkyPilot picks the first candidate it can get; this takes minutes)")
    job_id, _handle = sky.stream_and_get(sky.launch(task, cluster_name=name))
    port = _first_port(task)
    endpoint = None
    if port is not None:
        try:
            endpoints = sky.get(sky.endpoints(name, port))
            endpoint = endpoints.get(port) or endpoints.get(str(port))
        except Exception as exc:
            _print_err(f"could not read the endpoint of port {port}: {exc}")
    print(f"{name} is up (job {job_id}); logs: sky logs {name} {job_id}")
    if endpoint:
        print(f"port {port}: {endpoint}")
    return 0


def _first_port(task: sky.Task) -> int | None:
    for resources in task.resources:
        for port in resources.ports or []:
            return int(str(port).split("-")[0])
    return None


def cmd_down(args: argparse.Namespace) -> int:
    name = spec.CONTROL_PLANE_CLUSTER if args.control_plane else spec.cluster_name(args.region)
    if not sky.get(sky.status(cluster_names=[name])):
        _print_err(f"no cluster named {name}")
        return 1
    sky.stream_and_get(sky.down(name))
    print(f"{name} terminated")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """CrossLogic's clusters as JSON lines' worth of data: one object with a `clusters` list."""
    try:
        records = sky.get(sky.status(refresh=sky.StatusRefreshMode.NONE))
    except Exception as exc:
        _print_err(f"SkyPilot status failed: {type(exc).__name__}: {exc}")
        return 1
    clusters = [
        {
            "cluster": record.name,
            "region": spec.region_of(record.name),
            "role": "control-plane" if record.name == spec.CONTROL_PLANE_CLUSTER else "region",
            "status": record.status.value,
            "resources": record.resources_str or "",
            "cloud": record.cloud or "",
            "cloud_region": record.region or "",
            "launched_at": record.launched_at,
        }
        for record in records
        if record.name.startswith(spec.CLUSTER_PREFIX)
    ]
    json.dump({"clusters": sorted(clusters, key=lambda c: c["cluster"])}, sys.stdout)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crosslogic.cloud.driver")
    parser.add_argument("--configs-dir", default=str(spec.CONFIGS_DIR))
    sub = parser.add_subparsers(dest="command", required=True)

    def target(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--region")
        group.add_argument("--control-plane", action="store_true")

    up = sub.add_parser("up")
    target(up)
    up.add_argument("--accelerators", action="append", default=[])
    up.add_argument("--spot", action="store_true")
    up.add_argument("--cloud")
    up.add_argument("--control-plane-url", default=os.environ.get("CROSSLOGIC_URL"))
    up.add_argument("--env", action="append", default=[])
    up.add_argument("--workdir", default=str(spec.REPO_ROOT))
    up.add_argument("--print-task", action="store_true")
    up.set_defaults(handler=cmd_up)
    down = sub.add_parser("down")
    target(down)
    down.set_defaults(handler=cmd_down)
    sub.add_parser("status").set_defaults(handler=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except spec.SpecError as exc:
        _print_err(str(exc))
        return 2
    except ValueError as exc:  # SkyPilot's own refusals of a task (schema, null envs ...)
        _print_err(f"SkyPilot refused the task: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
