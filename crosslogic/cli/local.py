"""`crosslogic local up`: the whole stack on this machine, in the foreground until Ctrl-C.

Embedded PostgreSQL (unless DATABASE_URL is set), the development models, a local Ray head (GCS on
6390, not Redis's 6379), `serve deploy serve_config.yaml`, a local tenant and API key. Ctrl-C stops
everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crosslogic.cli.foreground import STOP_SIGNALS, run_in_foreground
from crosslogic.cli.foreground import say as _say
from crosslogic.regions.config import MASTER_SECRET_ENV
from crosslogic.settings import Settings

if TYPE_CHECKING:
    from crosslogic.localstack.ray_cluster import LocalRayCluster


def register(subparsers: Any) -> None:
    local = subparsers.add_parser("local", help="run the whole stack on this machine")
    sub = local.add_subparsers(dest="local_command", metavar="COMMAND")
    up = sub.add_parser("up", help="start everything and stay in the foreground until Ctrl-C")
    up.add_argument("--config", default="serve_config.yaml", help="Serve config to deploy")
    up.add_argument("--ray-port", type=int, default=6390, help="Ray GCS port (never 6379: Redis)")
    up.add_argument("--dashboard-port", type=int, default=8265)
    up.add_argument("--num-cpus", type=int, default=4, help="logical CPUs Ray schedules with")
    up.add_argument("--timeout", type=float, default=900, help="seconds to wait for the stack")
    up.add_argument("--no-wait", action="store_true", help="return once ready instead of staying up")
    up.set_defaults(handler=_up)
    down = sub.add_parser("down", help="stop the stack `up --no-wait` left running: Serve, Ray, engines, database")
    down.set_defaults(handler=_down)


def _prepare_models(config_path: Path, settings: Settings) -> None:
    import yaml

    from crosslogic.devmodels.catalog import dev_model_alias
    from crosslogic.devmodels.prepare import prepare_dev_model

    config = yaml.safe_load(config_path.read_text())
    for app in config.get("applications", []):
        for model in app.get("args", {}).get("models", []):
            alias = dev_model_alias(str(model.get("source", "")))
            if alias:
                prepare_dev_model(alias, settings, progress=lambda m: _say(f"model {m}"))


async def _database(settings: Settings) -> tuple[str, str]:
    """(dsn, dev api key) — migrations applied, local tenant and key ensured."""
    from crosslogic.localstack.dev_tenant import ensure_dev_key
    from crosslogic.storage.pool import open_database, resolve_database_url

    dsn = await resolve_database_url(settings)
    pool = await open_database(settings.with_database_url(dsn))
    try:
        secret, created = await ensure_dev_key(pool, settings.home)
    finally:
        await pool.close()
    _say(f"local API key {'created' if created else 'reused'} ({settings.home / 'dev-api-key'})")
    return dsn, secret


def _base_url(config_path: Path) -> str:
    import yaml

    http = (yaml.safe_load(config_path.read_text()) or {}).get("http_options") or {}
    return f"http://{http.get('host', '127.0.0.1')}:{int(http.get('port', 8000))}"


def _state_path(settings: Settings) -> Path:
    return settings.home / "local-stack.json"


def _up(args: argparse.Namespace) -> int:
    from crosslogic.admin.local_secret import load_or_create_local_secret, load_or_create_region_master_secret
    from crosslogic.localstack.ray_cluster import LocalRayCluster, ingress_mode, wait_ready

    settings = Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    config_path = Path(args.config).resolve()
    if not config_path.exists():
        print(f"crosslogic: {config_path} not found", file=sys.stderr)
        return 1
    started = time.monotonic()
    embedded = settings.database_url is None
    cluster = LocalRayCluster(
        gcs_port=args.ray_port, dashboard_port=args.dashboard_port, num_cpus=args.num_cpus, home=settings.home
    )

    # Ctrl-C, `kill` and a closed terminal all stop everything we started (crosslogic/cli/foreground.py).
    def start() -> None:
        _say(f"home: {settings.home}")
        _prepare_models(config_path, settings)
        _say("database: " + ("embedded PostgreSQL in " + str(settings.pgdata_dir) if embedded else "DATABASE_URL"))
        dsn, api_key = asyncio.run(_database(settings))
        # Every Ray process inherits these: replicas find the database and the admin secret.
        os.environ["DATABASE_URL"] = dsn
        os.environ.setdefault("CROSSLOGIC_ADMIN_JWT_SECRET", load_or_create_local_secret(settings.home))
        os.environ.setdefault(MASTER_SECRET_ENV, load_or_create_region_master_secret(settings.home))
        os.environ["CROSSLOGIC_LOCAL_STACK"] = "1"
        os.environ["CROSSLOGIC_HOME"] = str(settings.home)
        _say(f"starting Ray head on 127.0.0.1:{args.ray_port} (HTTP ingress: {ingress_mode()})")
        cluster.start()
        base = _base_url(config_path)
        # `crosslogic local down` stops exactly this stack, never another Ray cluster on the machine.
        _state_path(settings).write_text(json.dumps({
            "cluster_id": cluster.cluster_id, "dashboard_url": cluster.dashboard_url,
            "base_url": base, "embedded_db": embedded,
        }))
        _say(f"deploying {config_path.name}")
        cluster.deploy(config_path)
        wait_ready(base, timeout_s=args.timeout, progress=lambda m: _say(f"waiting {m}"))
        if os.environ.get("CROSSLOGIC_CPU_PLACEMENT", "1") != "0":
            # CPU engines: Ray's processes leave the cores vLLM computes on (throughput at 16 clients
            # 0.80 -> 0.93 of bare vLLM on 2 cores, benchmarks/serving_overhead.py).
            _say(cluster.keep_off_engine_cores())
        _say(_loopback_check(cluster))
        _print_banner(base, cluster.dashboard_url, api_key, time.monotonic() - started)

    return run_in_foreground(
        start, lambda: _stop(settings, cluster.cluster_id, cluster.dashboard_url, embedded), no_wait=args.no_wait)


def _loopback_check(cluster: LocalRayCluster) -> str:
    """The README promises a loopback-only stack: say so, or name every socket that breaks it
    (a Ray upgrade that binds something new on all interfaces shows here first)."""
    from crosslogic.localstack.listeners import table

    found = cluster.listeners()
    outside = [item for item in found if not item.loopback]
    if not outside:
        return f"{len(found)} listening sockets, all on loopback"
    return "WARNING: listening beyond loopback (reachable from the network):\n" + table(outside)


def _stop(settings: Settings, cluster_id: str, dashboard_url: str, embedded: bool) -> None:
    from crosslogic.localstack.ray_cluster import stop_cluster
    from crosslogic.storage.embedded import stop_embedded

    # A second Ctrl-C while stopping must not abandon the stop half way (processes left running).
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

    _say("stopping Serve, Ray and the engines")
    stop_cluster(cluster_id, dashboard_url)
    if embedded:
        _say("stopping embedded PostgreSQL")
        stop_embedded(settings.pgdata_dir)
    _state_path(settings).unlink(missing_ok=True)


def _down(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    path = _state_path(settings)
    if not path.exists():
        print(f"crosslogic: no local stack recorded in {path}", file=sys.stderr)
        return 1
    state = json.loads(path.read_text())
    _stop(settings, state["cluster_id"], state["dashboard_url"], bool(state["embedded_db"]))
    return 0


def _print_banner(base: str, dashboard: str, api_key: str, seconds: float) -> None:
    print(
        f"""
CrossLogic is up ({seconds:.0f}s).

  OpenAI base URL : {base}/v1
  API key         : {api_key}   (also in $CROSSLOGIC_HOME/dev-api-key)
  Ray dashboard   : {dashboard}
  Health / ready  : {base}/health  {base}/ready
  Admin token     : crosslogic admin token

Try it:

  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer $(cat ~/.crosslogic/dev-api-key)" -H "Content-Type: application/json" \\
    -d '{{"model": "smollm2-135m", "messages": [{{"role": "user", "content": "Say hello"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='{api_key}'); \\
print(c.chat.completions.create(model='smollm2-135m', \\
messages=[{{'role': 'user', 'content': 'Hi'}}]).choices[0].message.content)"

Ctrl-C stops everything.
""",
        flush=True,
    )
