"""A region on this machine: its own local Ray cluster running `region_config.yaml`'s application
(engines, regional gateway, regional agent) beside a control plane, for tests and for trying a second
region on a laptop (`crosslogic local region up`).

Driven through Ray's CLI like `LocalRayCluster` (no Ray import here). The region's secret reaches the
replicas through the environment of `ray start` (CROSSLOGIC_REGION_SECRET, given to that subprocess
only, so regions can start from several threads), never through the generated config file. Ready
means: the gateway answers a signed health call with its models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from crosslogic.errors import ConfigError
from crosslogic.localstack.ray_cluster import LocalRayCluster, Progress, free_port
from crosslogic.regions.config import REGION_SECRET_ENV, TlsClientConfig
from crosslogic.regions.gateway_client import tls_context
from crosslogic.regions.protocol import GATEWAY_HEALTH_PATH
from crosslogic.regions.signing import encode_secret, sign


def default_template() -> Path:
    """The repository's region_config.yaml (next to the package in a checkout), else ./region_config.yaml."""
    beside = Path(__file__).resolve().parents[2] / "region_config.yaml"
    return beside if beside.exists() else Path("region_config.yaml").resolve()


# Ports Ray's components take by default (GCS/Redis, client server, dashboard, dashboard agent).
_RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365})


def _ray_free_port() -> int:
    while (port := free_port()) in _RAY_DEFAULT_PORTS:
        pass
    return port


def _quiet(message: str) -> None:
    pass


@dataclass
class RegionStack:
    name: str
    control_plane_url: str
    secret: bytes
    # 0: a free port, chosen when the stack starts.
    gateway_port: int = 0
    # The gateway's own certificate (https) and, for mTLS, the CA its callers' certificates come from.
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    client_ca: str | None = None
    # How the agent dials the control plane, and how this launcher checks the gateway (CA bundle,
    # and the client certificate when the gateway requires one).
    agent_tls: TlsClientConfig = field(default_factory=TlsClientConfig)
    probe_tls: TlsClientConfig = field(default_factory=TlsClientConfig)
    interval_s: float = 2.0
    template: Path = field(default_factory=default_template)
    num_cpus: int = 4
    temp_dir: str | None = None
    home: Path | None = None
    cluster: LocalRayCluster | None = None
    config_path: Path | None = None

    @property
    def gateway_url(self) -> str:
        scheme = "https" if self.tls_certfile else "http"
        return f"{scheme}://127.0.0.1:{self.gateway_port}"

    def config(self) -> dict[str, Any]:
        """The Serve config this region deploys: the template with this region's name, ports and TLS."""
        config: dict[str, Any] = yaml.safe_load(self.template.read_text())
        app = config["applications"][0]
        args = app["args"]
        args["region"] = self.name
        args["gateway"] = {
            "host": "127.0.0.1", "port": self.gateway_port, "tls_certfile": self.tls_certfile,
            "tls_keyfile": self.tls_keyfile, "client_ca": self.client_ca,
        }
        args["agent"] = {
            "control_plane_url": self.control_plane_url, "interval_s": self.interval_s,
            "tls": self.agent_tls.model_dump(),
        }
        for model in args["models"]:
            model["num_replicas"] = 1
        # Serve's HTTP options stay (the proxy is disabled), but on a port of our own all the same.
        config.setdefault("http_options", {})["port"] = _ray_free_port()
        return config

    def start(self, *, timeout_s: float = 600, progress: Progress | None = None) -> None:
        """`launch`, then `deploy_and_wait`; stops the cluster if that fails."""
        self.launch(progress)
        self.deploy_and_wait(timeout_s=timeout_s, progress=progress)

    def launch(self, progress: Progress | None = None) -> LocalRayCluster:
        """Start the region's Ray cluster (with the secret in its environment) and write its config."""
        if not self.template.exists():
            raise ConfigError(f"{self.template} not found (the region's Serve config template)")
        if self.gateway_port == 0:
            self.gateway_port = _ray_free_port()
        config_dir = Path(self.temp_dir or (self.home or Path.home() / ".crosslogic"))
        config_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = config_dir / f"region-{self.name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        attempts = 3
        for attempt in range(1, attempts + 1):
            cluster = LocalRayCluster(
                gcs_port=_ray_free_port(), dashboard_port=_ray_free_port(), num_cpus=self.num_cpus,
                temp_dir=self.temp_dir, ingress="proxy", home=self.home,
                env={REGION_SECRET_ENV: encode_secret(self.secret)},
            )
            (progress or _quiet)(f"region {self.name}: starting Ray on {cluster.address}")
            try:
                cluster.start()
                break
            except ConfigError as exc:
                # A free port can still be one Ray's own components claim by default once started
                # (seen: 52365, the dashboard agent's): `ray start` refuses; new ports, once more.
                cluster.stop()
                if "same port" not in str(exc) or attempt == attempts:
                    raise
        self.cluster = cluster
        return cluster

    def deploy_and_wait(self, *, timeout_s: float = 600, progress: Progress | None = None) -> None:
        if self.cluster is None or self.config_path is None:
            raise RuntimeError("launch() the region first")
        say = progress or _quiet
        try:
            say(f"region {self.name}: deploying {self.config_path}")
            self.cluster.deploy(self.config_path)
            self.wait_ready(timeout_s=timeout_s, progress=say)
        except BaseException:
            self.stop()
            raise

    def health(self, timeout_s: float = 5.0) -> httpx.Response:
        """One signed health call to the gateway (what only the control plane can make)."""
        headers = sign(self.secret, purpose="gateway", region=self.name, method="GET",
                       path=GATEWAY_HEALTH_PATH, body=b"")
        verify: Any = tls_context(self.probe_tls) if self.tls_certfile else True
        return httpx.get(self.gateway_url + GATEWAY_HEALTH_PATH, headers=headers, timeout=timeout_s, verify=verify)

    def wait_ready(self, *, timeout_s: float, progress: Progress) -> dict[str, Any]:
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < timeout_s:
            try:
                response = self.health()
                if response.status_code == 200 and response.json().get("ok"):
                    took = time.monotonic() - started
                    progress(f"region {self.name}: gateway {self.gateway_url} ready in {took:.0f}s")
                    return dict(response.json())
                state = f"gateway answers {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError:
                state = "waiting for the gateway (engines starting)"
            if state != last:
                progress(f"[{time.monotonic() - started:5.0f}s] region {self.name}: {state}")
                last = state
            time.sleep(1.0)
        status = self.cluster.status() if self.cluster else ""
        raise TimeoutError(f"region {self.name}: gateway not ready after {timeout_s:.0f}s ({last})\n{status}")

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
