"""A local Ray head driven through Ray's own CLI (`ray start`, `serve deploy`), stopped by its own processes.

Used by `crosslogic local up` and by the end-to-end tests. Everything stays on loopback: Ray binds
the machine's routable address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set for every Ray
process and the node address is 127.0.0.1. Port 6379 (Ray's default GCS port) is left to Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslogic.errors import ConfigError

Progress = Callable[[str], None]


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before by this process.

    The port is released before its user binds it, so the kernel may offer it again to the next
    caller: seen once, the benchmark's HTTP port came back as one of HAProxy's side ports and the
    HTTP probe met a gRPC server.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


_CLUSTER_TAG = "CROSSLOGIC_LOCAL_CLUSTER_ID"


def ray_env(cluster_id: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if cluster_id:
        # Inherited by raylet -> workers -> vLLM's engine-core processes, so `stop` can find them all.
        env[_CLUSTER_TAG] = cluster_id
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # A stray ~/.ray/auth_token silently turns Ray's token auth on for `ray start` while the CLI
    # calls that follow then fail; the local cluster is loopback-only, so say "off" explicitly.
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("HF_HUB_OFFLINE", "1")
    # Ray starts its workers at nice 15, below its own daemons (GCS, raylet, dashboard, log monitor):
    # here the workers are the serving path (HAProxy, replicas, vLLM's processes), which bare vLLM
    # runs at 0. Measured at 16 clients (benchmarks/serving_overhead.py, crosslogic_nice0, one run):
    # stage medians admit 25 -> 19 ms, transit 29 -> 20 ms, outside 32 -> 13 ms; 1 client unchanged.
    env.setdefault("RAY_worker_niceness", "0")
    return env


# How HTTP reaches the ingress replicas. "haproxy" (default): Ray Serve's HAProxy ingress, where
# HAProxy on the HTTP port balances straight to a uvicorn inside each ingress replica ("direct
# ingress"); "proxy": Ray Serve's ProxyActor, which relays every ASGI message to the replica as a
# pickled Ray call. Measured on this 2-core machine (benchmarks/serving_overhead.py, SmolLM2, 64
# tokens, 16/64/128 requests per level, one run): TTFT overhead over bare vLLM p50 +19.7 -> +17.8 ms,
# throughput ratio at 16 clients 0.69 -> 0.74, GET /health +5.5 -> +0.5 ms.
INGRESS_ENV = "CROSSLOGIC_SERVE_INGRESS"
INGRESS_MODES = ("haproxy", "proxy")


def ingress_mode(mode: str | None = None) -> str:
    """`mode`, or CROSSLOGIC_SERVE_INGRESS (default "haproxy"), checked."""
    mode = mode or os.environ.get(INGRESS_ENV, "haproxy")
    if mode not in INGRESS_MODES:
        raise ConfigError(f"{INGRESS_ENV} must be one of {', '.join(INGRESS_MODES)}, not {mode!r}")
    return mode


def haproxy_env(request_timeout_s: float = 600) -> dict[str, str]:
    """What every Ray process of the cluster (`ray start`'s environment) needs for the HAProxy ingress.

    Ray reads the flags in each process (controller, replicas, the HAProxy manager): set at `ray
    start`, they reach all of them. The side ports get free ones so two local clusters (a
    developer's `make run` and the tests) coexist; they are HAProxy's stats page, its Prometheus
    endpoint (both listen on all interfaces: Ray's template, not ours) and the fallback ProxyActor
    that serves while no ingress replica is up.
    """
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        # One HAProxy thread: it relays bytes, and two cores are shared with the engines.
        "RAY_SERVE_HAPROXY_NBTHREAD": "1",
        # A config reload (replica added or replaced) hard-stops the old HAProxy process after this
        # long, cutting the streams it still carries: as long as the longest request may run.
        "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": str(int(request_timeout_s)),
        # A stopping ingress replica keeps serving (health check failing) this long so every HAProxy
        # stops sending to it; Serve's 30 s default is for multi-node rolling updates. One local node
        # with one HAProxy (health checks every 250 ms while a server is failing) needs 2 s; it makes
        # `make run`'s Ctrl-C and the test teardown 30 s shorter.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


def _bin(name: str) -> str:
    # The Ray CLI of the interpreter running us (the project's venv), not whatever is on PATH.
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise ConfigError(f"`{name}` not found: install the project with `make install`")
    return found


@dataclass
class LocalRayCluster:
    gcs_port: int = 6390
    dashboard_port: int = 8265
    num_cpus: int = 4
    temp_dir: str | None = None
    cluster_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # None: CROSSLOGIC_SERVE_INGRESS when the cluster starts (default "haproxy").
    ingress: str | None = None
    _serve_env: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        if self.gcs_port == 6379:
            raise ConfigError("Ray's GCS must not use port 6379 (Redis's port); pick another")
        cmd = [
            _bin("ray"), "start", "--head",
            f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={self.num_cpus}",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
        ]
        if self.temp_dir:
            cmd.append(f"--temp-dir={self.temp_dir}")
        self.ingress = ingress_mode(self.ingress)
        self._serve_env = haproxy_env() if self.ingress == "haproxy" else {}
        env = {**ray_env(self.cluster_id), **self._serve_env}
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(f"ray start failed: {result.stderr.strip().splitlines()[-1:] or result.stdout}")

    def deploy(self, config_path: Path, attempts: int = 5) -> None:
        # The dashboard's HTTP server may still be starting right after `ray start` returns.
        output = ""
        for attempt in range(attempts):
            result = subprocess.run(
                [_bin("serve"), "deploy", str(config_path), "-a", self.dashboard_url],
                env={**ray_env(), **self._serve_env}, capture_output=True, text=True,
            )
            if result.returncode == 0:
                return
            output = (result.stderr + result.stdout).strip()
            time.sleep(2 * (attempt + 1))
        lines = [line for line in output.splitlines() if line.strip() and set(line.strip()) != {"^"}]
        raise ConfigError(f"serve deploy failed: {' | '.join(lines[-3:])}")

    def status(self) -> str:
        result = subprocess.run(
            [_bin("serve"), "status", "-a", self.dashboard_url], env=ray_env(), capture_output=True, text=True
        )
        return result.stdout

    def keep_off_engine_cores(self) -> str:
        """Once the engines run: the cluster's other threads leave the CPU engines' cores (see
        `cpu_placement`). Returns what was done, for the log."""
        from crosslogic.localstack.cpu_placement import keep_off_engine_cores

        return keep_off_engine_cores(cluster_processes(self.cluster_id)).summary()

    def stop(self) -> None:
        """Shut down gracefully (engines stop their vLLM processes), then end this cluster's processes.

        Never `ray stop`: it ends every Ray cluster on the machine (a developer's `make run` while
        `make test` runs, another test session). Every process of this cluster carries our tag in its
        environment (inherited from `ray start`): raylet, GCS, dashboard, workers, and vLLM's
        engine-core processes, which would otherwise outlive a killed replica by several GB each.
        """
        stop_cluster(self.cluster_id, self.dashboard_url)


def stop_cluster(cluster_id: str, dashboard_url: str) -> None:
    """`LocalRayCluster.stop` for a cluster known only by its recorded id (`crosslogic local down`)."""
    subprocess.run(
        [_bin("serve"), "shutdown", "-y", "-a", dashboard_url],
        env=ray_env(), capture_output=True, text=True, timeout=120,
    )
    kill_tagged_processes(cluster_id, grace_s=10.0)
    # One scan misses a process started while we were killing (a worker the raylet was forking):
    # scan again until nothing is left.
    for _ in range(3):
        if not kill_tagged_processes(cluster_id, grace_s=2.0):
            break


def _carries_tag(proc: Any, cluster_id: str) -> bool:
    """Whether a process's environment holds our cluster tag.

    Read raw on Linux: Ray's agents rename themselves (setproctitle), which zeroes the start of the
    environment block; psutil stops parsing at the first empty entry and returns {} for them, so
    they were never found and survived every stop (DashboardAgent + RuntimeEnvAgent, 240 MB each time).
    """
    if not os.path.exists("/proc/self/environ"):  # macOS: no /proc
        return bool(proc.environ().get(_CLUSTER_TAG) == cluster_id)
    try:
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            return f"\0{_CLUSTER_TAG}={cluster_id}\0".encode() in b"\0" + f.read() + b"\0"
    except OSError:  # gone meanwhile, or not ours to read
        return False


def cluster_processes(cluster_id: str) -> list[Any]:
    """Every process of one local cluster (psutil.Process), this one excepted."""
    import psutil

    tagged = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            if _carries_tag(proc, cluster_id):
                tagged.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return tagged


def kill_tagged_processes(cluster_id: str, grace_s: float = 0.0) -> int:
    """End the processes of one local cluster: SIGTERM, then SIGKILL for those still alive after
    `grace_s`."""
    import psutil

    tagged = cluster_processes(cluster_id)
    for proc in tagged:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(tagged, timeout=grace_s) if grace_s > 0 else ([], tagged)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return len(tagged)


def wait_ready(base_url: str, timeout_s: float, progress: Progress | None = None) -> dict[str, object]:
    """Poll GET /ready until it answers 200; report each dependency's state as it changes."""
    deadline = time.monotonic() + timeout_s
    last = ""
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/ready", timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            try:
                deps = json.loads(exc.read() or b"{}").get("dependencies", {})
                summary = ", ".join(
                    f"{k}: {'ok' if v.get('ok') else v.get('detail', 'waiting')}" for k, v in deps.items()
                )
            except ValueError:  # the proxy is up but the application is still deploying
                summary = "deploying the application"
        except (urllib.error.URLError, OSError, ValueError):
            summary = "waiting for the HTTP proxy"
        if progress and summary != last:
            progress(f"[{time.monotonic() - started:5.0f}s] {summary}")
            last = summary
        time.sleep(1.0)
    raise TimeoutError(f"{base_url}/ready not ready after {timeout_s:.0f}s ({last})")
