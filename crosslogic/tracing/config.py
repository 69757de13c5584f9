"""`tracing:` in the app config (and in a region's): OpenTelemetry spans exported over OTLP/HTTP.

Off by default. The exporter's headers may carry a collector's credential: `serve_config.yaml` is
not the place for one, so with `headers` left empty the exporter reads OTEL_EXPORTER_OTLP_TRACES_HEADERS
or OTEL_EXPORTER_OTLP_HEADERS from the replica's environment (the OpenTelemetry convention).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The OTLP/HTTP receiver of a collector on the same node (4318 is OTLP/HTTP's registered port).
DEFAULT_ENDPOINT = "http://127.0.0.1:4318/v1/traces"


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # The full OTLP/HTTP traces URL, path included.
    endpoint: str = Field(default=DEFAULT_ENDPOINT, pattern=r"^https?://[^\s]+$", max_length=2000)
    service_name: str = Field(default="crosslogic", min_length=1, max_length=200)
    # Share of requests traced when the client sent no sampled `traceparent`: decided by the trace id,
    # so every process of one request decides alike.
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # A client's `traceparent` always joins its trace (same trace id). Whether its sampled flag also
    # decides that we record: on, a client can have every request it sends traced (more export load,
    # its own requests only); off, `sample_ratio` decides for client traces too.
    follow_client_sampling: bool = True
    # Sent with every export (e.g. a collector's tenant header); see the module docstring for secrets.
    headers: dict[str, str] = Field(default_factory=dict)
    compression: Literal["none", "gzip"] = "none"
    # The batch span processor: spans wait in a bounded queue (dropped past it, never blocking a
    # request) and go out in batches from a background thread every `batch_delay_s`.
    batch_delay_s: float = Field(default=5.0, gt=0, le=300)
    max_queue_size: int = Field(default=2048, ge=1, le=1_000_000)
    max_export_batch_size: int = Field(default=512, ge=1, le=100_000)
    export_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> TracingConfig:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self
