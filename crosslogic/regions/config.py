"""Region configuration, the control plane's side (`regions:` in serve_config.yaml); a region's own app
config is in crosslogic/regions/app_config.py.

Secrets come from the environment, never from these files:
- control plane: CROSSLOGIC_REGION_MASTER_SECRET (hex, 32+ bytes); each region's secret derives from it
  (crosslogic/regions/signing.py); the local stack generates one in $CROSSLOGIC_HOME.
- region: CROSSLOGIC_REGION_SECRET (hex), what `crosslogic admin regions create` printed once.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crosslogic.regions.signing import DEFAULT_SKEW_S

MASTER_SECRET_ENV = "CROSSLOGIC_REGION_MASTER_SECRET"
REGION_SECRET_ENV = "CROSSLOGIC_REGION_SECRET"


class TlsClientConfig(BaseModel):
    """How a client (the control plane dialing a gateway, an agent dialing the control plane)
    checks its peer and proves itself: a CA bundle to trust, and an optional client certificate."""

    model_config = ConfigDict(extra="forbid")

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsClientConfig:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return self


class RegionsConfig(BaseModel):
    """The control plane's side of regions."""

    model_config = ConfigDict(extra="forbid")

    # A region silent for this many of its own heartbeat intervals is drained.
    missed_heartbeats: int = Field(default=3, ge=1, le=100)
    clock_skew_s: float = Field(default=DEFAULT_SKEW_S, gt=0, le=600)
    # A request goes to its preferred region (header x-crosslogic-region, else the key's, else the
    # tenant's) unless that region's best replica is deeper than the best elsewhere by more than this
    # many queued requests: then it spills over.
    spill_over_queue_depth: float = Field(default=4.0, ge=0)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    # A regional stream silent this long (not even the gateway's keep-alive line, sent every 5 s:
    # crosslogic/regions/keepalive.py) is given up: retried elsewhere before its first event, ended
    # with an error after. Keep it a few keep-alives long.
    stream_idle_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    tls: TlsClientConfig = Field(default_factory=TlsClientConfig)
