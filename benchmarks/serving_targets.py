"""The two targets of `serving_overhead.py`, each brought up and always torn down.

(a) vLLM's own OpenAI server on the prepared model directory, with serve_config.yaml's engine
    settings, in its own session so stopping it also stops its engine-core children;
(b) CrossLogic: a local Ray head with a benchmark variant of serve_config.yaml (the chat model only,
    one replica, a free HTTP port), a throw-away database on the PostgreSQL server of DATABASE_URL
    (else 127.0.0.1:5432, else an embedded one) and an API key from `ensure_dev_key` in a temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from process_probe import TAG

from crosslogic.localstack.ray_cluster import LocalRayCluster, free_port, kill_tagged_processes, wait_ready
from crosslogic.settings import Settings

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/test"
ENGINE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_USE_AOT_COMPILE": "0"}


@dataclass(frozen=True)
class Variant:
    """A CrossLogic deployment variant: env of `ray start`, and vLLM arguments added to the model's."""

    ray_env: dict[str, str] = field(default_factory=dict)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # Added to the application's `ingress` settings (e.g. engine_transport).
    ingress: dict[str, Any] = field(default_factory=dict)
    # Added to the application's `limits` settings (e.g. overlap_admission).
    limits: dict[str, Any] = field(default_factory=dict)
    # Move the cluster's other threads off the engine worker's cores once ready (cpu_placement), as
    # `crosslogic local up` does.
    placement: bool = True
    # The application's models instead of the shipped chat model (e.g. engine-simulator fleets).
    models: list[dict[str, Any]] | None = None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- target (a): bare vLLM -------------------------------------------------------------------------


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"{log_path.name}: the server exited during start-up:\n" + "\n".join(tail))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s")


def bench_dtype() -> str:
    """What serve_config's `dtype: auto` becomes on this CPU: both targets run the same dtype."""
    from crosslogic.engine.cpu_dtype import cpu_flags, resolve_dtype

    return resolve_dtype("auto", on_cpu=True, flags=cpu_flags())


@contextlib.contextmanager
def bare_vllm(model_path: str, workdir: Path, tag: str, stream_interval: int = 1) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
        "--served-model-name", MODEL, "--dtype", bench_dtype(), "--max-model-len", "2048", "--enforce-eager",
        "--max-num-seqs", "32", "--host", "127.0.0.1", "--port", str(port), "--stream-interval", str(stream_interval),
    ]
    env = {**os.environ, **ENGINE_ENV, TAG: tag}
    with server_process("bare vLLM", cmd, env, workdir / "vllm-server.log", f"http://127.0.0.1:{port}/health", 900, tag):
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def server_process(
    label: str, cmd: list[str], env: dict[str, str], log_path: Path, health_url: str, timeout_s: float, tag: str,
) -> Iterator[None]:
    """A server in its own session (its children die with the group on stop), ready when `health_url` is."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log(f"{label}: starting, {health_url} (log {log_path})")
        started = time.monotonic()
        wait_http_ok(health_url, timeout_s, proc, log_path)
        log(f"{label}: ready in {time.monotonic() - started:.0f}s")
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        kill_tagged_processes(tag)
        log(f"{label}: stopped")


# -- target (b): CrossLogic ------------------------------------------------------------------------


async def pg_server_url() -> str | None:
    import asyncpg

    for url in [os.environ.get("DATABASE_URL"), MACHINE_PG]:
        if not url:
            continue
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            conn = await asyncpg.connect(url, timeout=3)
            await conn.close()
            return url
    return None


async def on_server(server_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def issue_key(dsn: str, home: Path) -> str:
    from crosslogic.localstack.dev_tenant import ensure_dev_key
    from crosslogic.storage.pool import open_database

    pool = await open_database(Settings.from_env().with_database_url(dsn))
    try:
        secret, _ = await ensure_dev_key(pool, home)
        return secret
    finally:
        await pool.close()


def bench_config(
    http_port: int, engine_kwargs: dict[str, Any], ingress: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None, models: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["port"] = http_port
    app = config["applications"][0]
    if models is not None:
        app["args"]["models"] = models
    else:
        app["args"]["models"] = [m for m in app["args"]["models"] if m["served_name"] == MODEL]
        app["args"]["models"][0]["num_replicas"] = 1
        app["args"]["models"][0]["engine"].setdefault("engine_kwargs", {}).update(engine_kwargs)
    app["args"]["ingress"].update(ingress or {})
    if limits:
        app["args"]["limits"] = {**app["args"].get("limits", {}), **limits}
    return config


@contextlib.contextmanager
def _ray_stack(workdir: Path, dsn: str, cluster: LocalRayCluster, variant: Variant) -> Iterator[tuple[str, str]]:
    api_key = asyncio.run(issue_key(dsn, workdir / "home"))
    http_port = free_port()
    config_path = workdir / "serve_config.bench.yaml"
    config_path.write_text(yaml.safe_dump(bench_config(
        http_port, variant.engine_kwargs, variant.ingress, variant.limits, variant.models)))
    # Every Ray process inherits these from `ray start`: the replicas find the database and secret.
    env = {"DATABASE_URL": dsn, "CROSSLOGIC_ADMIN_JWT_SECRET": secrets.token_urlsafe(48), **variant.ray_env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        log(f"CrossLogic: starting Ray head on {cluster.address} ({variant})")
        cluster.start()
        cluster.deploy(config_path)
        base = f"http://127.0.0.1:{http_port}"
        started = time.monotonic()
        wait_ready(base, timeout_s=900, progress=lambda m: log(f"CrossLogic: {m}"))
        log(f"CrossLogic: ready in {time.monotonic() - started:.0f}s")
        if variant.placement:
            log(f"CrossLogic: {cluster.keep_off_engine_cores()}")
        yield f"{base}/v1", api_key
    finally:
        log("CrossLogic: stopping Ray and the engine")
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class CrossLogicTarget:
    base_url: str
    api_key: str
    tag: str  # the cluster id every process of the stack carries
    database: str  # "server" or "embedded"


@contextlib.contextmanager
def crosslogic_target(workdir: Path, variant: Variant) -> Iterator[CrossLogicTarget]:
    """The stack on a throw-away database (the shared one's migrations and tenants stay untouched)."""
    from crosslogic.storage.embedded import start_embedded, stop_embedded
    from crosslogic.storage.pool import dsn_with_database

    server = asyncio.run(pg_server_url())
    embedded = server is None
    if server is None:
        log("PostgreSQL: none reachable, starting an embedded server")
        server = start_embedded(workdir / "pgdata", durable=False).dsn()
    database = f"crosslogic_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(on_server(server, f'CREATE DATABASE "{database}"'))
    cluster = LocalRayCluster(gcs_port=free_port(), dashboard_port=free_port(), num_cpus=4, temp_dir=str(workdir / "ray"))
    try:
        with _ray_stack(workdir, dsn_with_database(server, database), cluster, variant) as (base_url, api_key):
            yield CrossLogicTarget(base_url, api_key, cluster.cluster_id, "embedded" if embedded else "server")
    finally:
        asyncio.run(on_server(server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if embedded:
            stop_embedded(workdir / "pgdata")
