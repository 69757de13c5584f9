"""`crosslogic local region up|down`: a second region on this machine, beside `crosslogic local up`.

The region is its own local Ray cluster (other ports; never 6379) running region_config.yaml's
application: a real engine, the regional gateway and the agent beating to the control plane. Get its
secret from the control plane first (`crosslogic admin regions create NAME` prints it once) and save
it to a file (mode 0600): it never goes on a command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from crosslogic.cli.foreground import run_in_foreground
from crosslogic.cli.foreground import say as _say
from crosslogic.settings import Settings


def register(subparsers: Any) -> None:
    # A subcommand of `local` (crosslogic/cli/local.py registers `local` before us).
    local = subparsers.choices["local"]
    local_commands = next(a for a in local._actions if isinstance(a, argparse._SubParsersAction))
    region = local_commands.add_parser("region", help="run a second region on this machine (own Ray cluster)")
    sub = region.add_subparsers(dest="region_command", metavar="COMMAND")
    up = sub.add_parser("up", help="start a region and stay in the foreground until Ctrl-C")
    up.add_argument("--name", required=True, help="the region's name, as registered on the control plane")
    up.add_argument("--control-plane", required=True, help="the control plane's base URL, e.g. http://127.0.0.1:8000")
    up.add_argument("--secret-file", required=True, help="file holding the region's secret (64 hex characters)")
    up.add_argument("--gateway-port", type=int, default=0, help="the gateway's port (default: a free one)")
    up.add_argument("--config", default=None, help="region Serve config template (default region_config.yaml)")
    up.add_argument("--interval", type=float, default=2.0, help="heartbeat interval, seconds")
    up.add_argument("--num-cpus", type=int, default=4, help="logical CPUs the region's Ray schedules with")
    up.add_argument("--timeout", type=float, default=900, help="seconds to wait for the gateway")
    up.add_argument("--no-wait", action="store_true", help="return once ready instead of staying up")
    up.set_defaults(handler=_up)
    down = sub.add_parser("down", help="stop a region `up --no-wait` left running")
    down.add_argument("--name", required=True)
    down.set_defaults(handler=_down)


def _state_path(settings: Settings, name: str) -> Path:
    return settings.home / f"local-region-{name}.json"


def _up(args: argparse.Namespace) -> int:
    from crosslogic.localstack.region_stack import RegionStack, default_template
    from crosslogic.regions.signing import decode_secret

    settings = Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        secret = decode_secret(Path(args.secret_file).read_text())
    except (OSError, ValueError) as exc:
        print(f"crosslogic: --secret-file: {exc}", file=sys.stderr)
        return 1
    stack = RegionStack(
        name=args.name, control_plane_url=args.control_plane.rstrip("/"), secret=secret,
        gateway_port=args.gateway_port, interval_s=args.interval, num_cpus=args.num_cpus,
        template=Path(args.config).resolve() if args.config else default_template(), home=settings.home,
    )
    started = time.monotonic()

    def start() -> None:
        cluster = stack.launch(progress=_say)
        # Recorded before the deploy: `down` can stop a region whose start was interrupted.
        _state_path(settings, args.name).write_text(json.dumps({
            "cluster_id": cluster.cluster_id, "dashboard_url": cluster.dashboard_url,
            "gateway_url": stack.gateway_url,
        }))
        stack.deploy_and_wait(timeout_s=args.timeout, progress=_say)
        _say(f"region {args.name} is up ({time.monotonic() - started:.0f}s): gateway {stack.gateway_url}, "
             f"heartbeats to {args.control_plane}, Ray dashboard {cluster.dashboard_url}")

    def stop() -> None:
        _say(f"stopping region {args.name}")
        stack.stop()
        _state_path(settings, args.name).unlink(missing_ok=True)

    return run_in_foreground(start, stop, no_wait=args.no_wait, waiting="Ctrl-C stops the region")


def _down(args: argparse.Namespace) -> int:
    from crosslogic.localstack.ray_cluster import stop_cluster

    settings = Settings.from_env()
    path = _state_path(settings, args.name)
    if not path.exists():
        print(f"crosslogic: no local region '{args.name}' recorded in {path}", file=sys.stderr)
        return 1
    state = json.loads(path.read_text())
    _say(f"stopping region {args.name}")
    stop_cluster(state["cluster_id"], state["dashboard_url"])
    path.unlink(missing_ok=True)
    return 0
