"""A local Ray head driven through Ray's own CLI (`ray start`, `serve deploy`), stopped by its own processes.

Used by `crosslogic local up` and by the end-to-end tests. Everything stays on loopback: Ray binds
the machine's routable address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set for every Ray
process and the node address is 127.0.0.1. Two listeners Ray binds on all interfaces whatever the
node address are moved to loopback too: HAProxy's stats and Prometheus pages (`haproxy_env`) and
each Serve replica's gRPC server (`ray_env`). Port 6379 (Ray's default GCS port) is left to Redis.
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

from crosslogic.backoff import Backoff
from crosslogic.errors import ConfigError
from crosslogic.localstack.haproxy_loopback import REAL_BINARY_ENV, real_haproxy_binary, write_launcher
from crosslogic.localstack.listeners import Listener, listeners
from crosslogic.settings import default_home

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
# Between `serve deploy` tries while the dashboard's HTTP server starts: 2, 4, 8, 10 s (no jitter:
# one CLI against its own cluster).
_DEPLOY_RETRY = Backoff(base_s=2.0, max_s=10.0, jitter=0.0)
_PRELOAD_ENV = "RAY_preload_python_modules"
LOOPBACK_PRELOAD = "deployments.local_loopback"


def ray_env(cluster_id: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if cluster_id:
        # Inherited by raylet -> workers -> vLLM's engine-core processes, so `stop` can find them all.
        env[_CLUSTER_TAG] = cluster_id
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # A stray ~/.ray/auth_token silently turns Ray's token auth on for `ray start` while the CLI
    # calls that follow then fail; the local cluster is loopback-only (tests/serve/test_listeners.py
    # checks every socket), so say "off" explicitly.
    env.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's system config `preload_python_modules`: every worker imports this module first. It
    # moves the gRPC server each Serve replica binds on all interfaces (hard-coded in Ray) to
    # loopback; see the module. Appended to what the caller preloads already.
    preload = [m for m in env.get(_PRELOAD_ENV, "").split(",") if m and m != LOOPBACK_PRELOAD]
    env[_PRELOAD_ENV] = ",".join([*preload, LOOPBACK_PRELOAD])
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("HF_HUB_OFFLINE", "1")
    # Ray starts its workers at nice 15, below its own daemons (GCS, raylet, dashboard, log monitor):
    # here the workers are the serving path (HAProxy, replicas, vLLM's processes), which bare vLLM
    # runs at 0. Every stage of a request got faster at 16 clients (README, "Why the defaults").
    env.setdefault("RAY_worker_niceness", "0")
    return env


# How HTTP reaches the ingress replicas. "haproxy" (default): Ray Serve's HAProxy ingress, where
# HAProxy on the HTTP port balances straight to a uvicorn inside each ingress replica ("direct
# ingress"); "proxy": Ray Serve's ProxyActor, which relays every ASGI message to the replica as a
# pickled Ray call. HAProxy costs less TTFT and gives more throughput (benchmarks/serving_overhead.py;
# README, "Why the defaults").
INGRESS_ENV = "CROSSLOGIC_SERVE_INGRESS"
INGRESS_MODES = ("haproxy", "proxy")


def ingress_mode(mode: str | None = None) -> str:
    """`mode`, or CROSSLOGIC_SERVE_INGRESS (default "haproxy"), checked."""
    mode = mode or os.environ.get(INGRESS_ENV, "haproxy")
    if mode not in INGRESS_MODES:
        raise ConfigError(f"{INGRESS_ENV} must be one of {', '.join(INGRESS_MODES)}, not {mode!r}")
    return mode


def haproxy_env(request_timeout_s: float = 600, home: Path | None = None) -> dict[str, str]:
    """What every Ray process of the cluster (`ray start`'s environment) needs for the HAProxy ingress.

    Ray reads the flags in each process (controller, replicas, the HAProxy manager): set at `ray
    start`, they reach all of them. The side ports get free ones so two local clusters (a
    developer's `make run` and the tests) coexist; they are HAProxy's stats page, its Prometheus
    endpoint and the fallback ProxyActor that serves while no ingress replica is up. Ray's template
    binds the first two on all interfaces: HAProxy is started through a launcher, written into
    `home` (default $CROSSLOGIC_HOME), that moves them to loopback (see `haproxy_loopback`).
    """
    home = home or default_home()
    # HAProxy's access log. Ray's default target, syslog at UDP 127.0.0.1:514 (where nothing
    # listens on a laptop: the lines were dropped), makes HAProxy send from an unconnected UDP
    # socket on 0.0.0.0. A Unix datagram path drops them just as quietly with no socket on the
    # network; to read them, listen there: `socat -u UNIX-RECV:$CROSSLOGIC_HOME/haproxy-access.sock -`.
    # (Over ~100 bytes a Unix path no longer fits sockaddr_un: keep Ray's default then.)
    access_log = str(home / "haproxy-access.sock")
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(write_launcher(home / "bin")),
        REAL_BINARY_ENV: real_haproxy_binary(),
        **({"RAY_SERVE_HAPROXY_LOG_TARGET": access_log} if len(access_log) < 100 else {}),
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
    # Where generated files go (the HAProxy launcher); None: $CROSSLOGIC_HOME.
    home: Path | None = None
    # More environment for `ray start` (and so for every Ray process and replica), e.g. a region's
    # secret: handed to the subprocess only, never set in this process's os.environ.
    env: dict[str, str] = field(default_factory=dict, repr=False)
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
        self._serve_env = haproxy_env(home=self.home) if self.ingress == "haproxy" else {}
        env = {**ray_env(self.cluster_id), **self._serve_env, **self.env}
        # Its own session: the daemons `ray start` leaves behind (GCS, raylet, dashboard, and the
        # workers and HAProxy they start) must not share the terminal's process group, or Ctrl-C
        # reaches them too and the half-dead cluster hangs `serve shutdown`. The CLI stops them.
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True)
        if result.returncode != 0:
            raise ConfigError(f"ray start failed: {result.stderr.strip().splitlines()[-1:] or result.stdout}")

    def deploy(self, config_path: Path, attempts: int = 5) -> None:
        # The dashboard's HTTP server may still be starting right after `ray start` returns.
        output = ""
        for attempt in range(attempts):
            result = subprocess.run(
                [_bin("serve"), "deploy", str(config_path), "-a", self.dashboard_url],
                env={**ray_env(), **self._serve_env}, capture_output=True, text=True, start_new_session=True,
            )
            if result.returncode == 0:
                return
            output = (result.stderr + result.stdout).strip()
            if attempt + 1 < attempts:
                time.sleep(_DEPLOY_RETRY.delay(attempt + 1))
        lines = [line for line in output.splitlines() if line.strip() and set(line.strip()) != {"^"}]
        raise ConfigError(f"serve deploy failed: {' | '.join(lines[-3:])}")

    def status(self) -> str:
        result = subprocess.run(
            [_bin("serve"), "status", "-a", self.dashboard_url], env=ray_env(), capture_output=True, text=True
        )
        return result.stdout

    def listeners(self) -> list[Listener]:
        """Every socket this cluster's processes listen on (all must be on loopback)."""
        return listeners(cluster_processes(self.cluster_id))

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


def stop_cluster(cluster_id: str, dashboard_url: str, *, shutdown_timeout_s: float = 10.0,
                 grace_s: float = 6.0) -> None:
    """`LocalRayCluster.stop` for a cluster known only by its recorded id (`crosslogic local down`).

    Bounded, so Ctrl-C on `local up` ends within 30 s: a graceful `serve shutdown` that does not
    finish in time is abandoned and the tagged processes are ended anyway, SIGKILL after `grace_s`.
    """
    try:
        subprocess.run(
            [_bin("serve"), "shutdown", "-y", "-a", dashboard_url],
            env=ray_env(), capture_output=True, text=True, timeout=shutdown_timeout_s, start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        pass  # subprocess.run killed it; the processes below are ended regardless
    kill_tagged_processes(cluster_id, grace_s=grace_s)
    # One scan misses a process started while we were killing (a worker the raylet was forking):
    # scan again until nothing is left.
    for _ in range(3):
        if not kill_tagged_processes(cluster_id, grace_s=1.0):
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
    """Every process of one local cluster (psutil.Process), this one excepted: those carrying our
    tag, and their descendants.

    The descendants matter for Ray's agents: the raylet hands them an environment in hash order
    and their new title zeroes its first 450-1450 bytes, so the tag survives only where it happened
    to land further on. Seen in tests/serve/test_local_stack.py: DashboardAgent and RuntimeEnvAgent
    missed, so they outlived `local down` and their sockets went unchecked. The raylet (their
    parent, not retitled) keeps its environment intact.
    """
    import psutil

    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and _carries_tag(proc, cluster_id):
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in list(found.values()):
        try:
            found.update((child.pid, child) for child in proc.children(recursive=True) if child.pid != os.getpid())
        except psutil.Error:  # ended meanwhile
            continue
    return list(found.values())


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
