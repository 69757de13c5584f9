"""`crosslogic cluster up|down|status`: the control plane's and regions' clusters, through SkyPilot.

SkyPilot cannot share this environment (its click pin conflicts with vLLM's dependencies): these
commands run crosslogic/cloud/driver.py with .venv-cloud's Python (`make cloud-env`).
`status` also asks the control plane (GET /admin/v1/regions) how each region is doing, and shows
what it can when either side is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from crosslogic.cli.admin_client import DEFAULT_URL, AdminApiError, _client, format_table, http_options
from crosslogic.cloud.task_spec import CLUSTER_PREFIX, CONTROL_PLANE_CLUSTER, REPO_ROOT, SpecError, cluster_name
from crosslogic.errors import ConfigError

CLOUD_PYTHON_ENV = "CROSSLOGIC_CLOUD_PYTHON"
CONTROL_PLANE_TIMEOUT_S = 10.0
# The first SkyPilot call on a machine starts SkyPilot's local API server: 10 s on an idle 2-core
# machine, 25 s on a busy one; later calls take about 2 s.
SKYPILOT_STATUS_TIMEOUT_S = 120.0
STATUS_COLUMNS = ("region", "cluster", "status", "resources", "cloud", "state", "heartbeat_age_s", "models", "reason")


def cloud_python() -> Path:
    return Path(os.environ.get(CLOUD_PYTHON_ENV) or REPO_ROOT / ".venv-cloud" / "bin" / "python")


def _driver(
    args: list[str], *, capture: bool = False, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    python = cloud_python()
    if not python.exists():
        raise ConfigError(f"SkyPilot's environment is missing ({python}): run `make cloud-env` first")
    return subprocess.run(
        [str(python), "-m", "crosslogic.cloud.driver", *args],
        cwd=REPO_ROOT, text=True, capture_output=capture, stdin=subprocess.DEVNULL if capture else None,
        timeout=timeout,
    )


def _target(args: argparse.Namespace) -> list[str]:
    return ["--control-plane"] if args.control_plane else ["--region", args.region]


def _refusing(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A missing .venv-cloud or a bad region name: one line and exit 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ConfigError, SpecError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _cmd_up(args: argparse.Namespace) -> int:
    argv = ["up", *_target(args)]
    for value in args.accelerators:
        argv += ["--accelerators", value]
    for value in args.env:
        argv += ["--env", value]
    if args.spot:
        argv.append("--spot")
    if args.cloud:
        argv += ["--cloud", args.cloud]
    url = args.control_plane_url or os.environ.get("CROSSLOGIC_URL")
    if url:
        argv += ["--control-plane-url", url]
    if args.print_task:
        argv.append("--print-task")
    return _driver(argv).returncode


def _cmd_down(args: argparse.Namespace) -> int:
    name = CONTROL_PLANE_CLUSTER if args.control_plane else cluster_name(args.region)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: terminating {name} needs --yes when not asked on a terminal", file=sys.stderr)
            return 2
        answer = input(f"Terminate {name} (its GPUs, disks and everything on them)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    return _driver(["down", *_target(args)]).returncode


# --- status ---------------------------------------------------------------------------------------


def skypilot_clusters() -> tuple[list[dict[str, Any]] | None, str]:
    """SkyPilot's crosslogic-* clusters, or None and why not."""
    try:
        result = _driver(["status"], capture=True, timeout=SKYPILOT_STATUS_TIMEOUT_S)
    except ConfigError as exc:
        return None, str(exc)
    except subprocess.TimeoutExpired:
        return None, f"SkyPilot status gave no answer within {SKYPILOT_STATUS_TIMEOUT_S:g} s"
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        return None, f"SkyPilot status failed: {lines[-1] if lines else f'exit {result.returncode}'}"
    try:
        return list(json.loads(result.stdout.strip().splitlines()[-1])["clusters"]), ""
    except (ValueError, KeyError, IndexError):
        return None, "SkyPilot status printed no cluster list"


async def control_plane_regions(args: argparse.Namespace) -> tuple[list[dict[str, Any]] | None, str]:
    """The control plane's region registry with each region's state, or None and why not."""
    try:
        async with _client(args) as client:
            result = await asyncio.wait_for(client.call("GET", "/regions"), CONTROL_PLANE_TIMEOUT_S)
    except AdminApiError as exc:
        return None, f"{exc.status} {exc.code}: {exc.message}"
    except ConfigError as exc:  # no token to ask with
        return None, f"not asked: {exc}"
    except (httpx.HTTPError, OSError) as exc:
        return None, f"unreachable ({type(exc).__name__}: {exc})"
    except TimeoutError:
        return None, f"no answer within {CONTROL_PLANE_TIMEOUT_S:g} s"
    return list(result.get("data") or []), ""


def merge(clusters: list[dict[str, Any]], regions: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One row per region (or control-plane cluster) known to either side (`regions` None: the
    control plane could not be asked)."""
    rows: dict[str, dict[str, Any]] = {}
    for cluster in clusters:
        key = cluster.get("region") or cluster["cluster"]
        rows[key] = {
            "region": cluster.get("region") or "(control plane)",
            "cluster": cluster["cluster"],
            "status": cluster["status"],
            "resources": cluster.get("resources"),
            "cloud": "/".join(p for p in (cluster.get("cloud"), cluster.get("cloud_region")) if p),
        }
    for region in regions or []:
        row = rows.setdefault(region["name"], {"region": region["name"], "cluster": "-", "status": "no cluster"})
        row.update({
            "state": region.get("state"),
            "heartbeat_age_s": region.get("last_heartbeat_age_s"),
            "models": region.get("models") or [],
            "reason": region.get("reason") or None,
        })
    for row in rows.values():
        if row["cluster"] != "-" and row["region"] != "(control plane)" and "state" not in row:
            row["state"] = "not registered" if regions is not None else "?"
    return sorted(rows.values(), key=lambda r: (r["region"] != "(control plane)", r["region"]))


async def _cmd_status(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("CROSSLOGIC_URL") or DEFAULT_URL
    clusters_task = asyncio.to_thread(skypilot_clusters)
    (clusters, sky_error), (regions, cp_error) = await asyncio.gather(clusters_task, control_plane_regions(args))
    if args.json:
        print(json.dumps({
            "skypilot": {"clusters": clusters, "error": sky_error or None},
            "control_plane": {"url": url, "regions": regions, "error": cp_error or None},
            "rows": merge(clusters or [], regions),
        }, indent=2, default=str))
        return 0
    if clusters is None:
        print(f"SkyPilot: {sky_error}")
    else:
        print(f"SkyPilot: {len(clusters)} cluster(s) named {CLUSTER_PREFIX}*")
    if regions is None:
        print(f"control plane {url}: {cp_error}")
    else:
        print(f"control plane {url}: {len(regions)} region(s) registered")
    rows = merge(clusters or [], regions)
    if rows:
        print()
        print(format_table(rows, STATUS_COLUMNS))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cluster = subparsers.add_parser(
        "cluster", help="bring regions' GPU clusters and the control plane up and down (SkyPilot)"
    )
    commands = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)

    def target(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--region", help="the region's name (its cluster is crosslogic-<region>)")
        group.add_argument("--control-plane", action="store_true", help="the control plane's cluster")

    up = commands.add_parser("up", help="launch a cluster from cluster_configs/ (versions from versions.yaml)")
    target(up)
    up.add_argument(
        "--accelerators", action="append", default=[], metavar="GPU:N[,GPU:N...]",
        help="GPUs in preference order, e.g. H100:1,A100-80GB:1 (default: the YAML's list)",
    )
    up.add_argument("--spot", action="store_true", help="each GPU as spot first, then on demand")
    up.add_argument("--cloud", help="pin SkyPilot infra: aws, aws/eu-west-1, gcp, k8s/<context> ...")
    up.add_argument(
        "--control-plane-url", help="where the region's agent reaches the control plane (env CROSSLOGIC_URL)"
    )
    up.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="override a task env")
    up.add_argument("--print-task", action="store_true", help="print the final SkyPilot task; launch nothing")
    up.set_defaults(handler=_refusing(_cmd_up))

    down = commands.add_parser("down", help="terminate a cluster")
    target(down)
    down.add_argument("--yes", action="store_true", help="do not ask")
    down.set_defaults(handler=_refusing(_cmd_down))

    status = commands.add_parser(
        "status", parents=[http_options()],
        help="SkyPilot's clusters merged with the control plane's region registry",
    )
    status.set_defaults(handler=_cmd_status)

