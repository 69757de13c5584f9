"""A region's own Serve application config (`region_config.yaml`, the app
`deployments.region_app:build_region_app`): its engines, its gateway and its agent.

The region's secret comes from the environment (CROSSLOGIC_REGION_SECRET), never from this file.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crosslogic.config import ModelDeploymentConfig, RouterConfig
from crosslogic.regions.config import TlsClientConfig
from crosslogic.regions.signing import DEFAULT_SKEW_S, REGION_NAME_PATTERN
from crosslogic.tracing.config import TracingConfig


class GatewayListenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    # 0: any free port (the agent reports the one bound).
    port: int = Field(default=0, ge=0, le=65535)
    # What the control plane dials when it differs from host:port (a load balancer, a public name).
    advertise_url: str | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    # Set: callers must also present a client certificate signed by this CA (mTLS), on top of the
    # signed requests every caller needs anyway.
    client_ca: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewayListenConfig:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        if self.client_ca is not None and self.tls_certfile is None:
            raise ValueError("client_ca (mTLS) needs tls_certfile and tls_keyfile")
        return self


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The control plane's public base URL, e.g. https://api.example.com
    control_plane_url: str = Field(pattern=r"^https?://[^\s]+$")
    interval_s: float = Field(default=2.0, gt=0, le=300)
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    tls: TlsClientConfig = Field(default_factory=TlsClientConfig)


class RegionAppConfig(BaseModel):
    """A region's Serve application: its engines, its gateway and its agent."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field(pattern=REGION_NAME_PATTERN)
    models: list[ModelDeploymentConfig] = Field(min_length=1)
    router: RouterConfig = Field(default_factory=RouterConfig)
    gateway: GatewayListenConfig = Field(default_factory=GatewayListenConfig)
    agent: AgentConfig
    clock_skew_s: float = Field(default=DEFAULT_SKEW_S, gt=0, le=600)
    # The region's engines continue the control plane's traces (crosslogic/tracing); off by default.
    tracing: TracingConfig = Field(default_factory=TracingConfig)
