"""Application configuration: what `serve_config.yaml` passes to the app builder as `args`.

Secrets and endpoints come from the environment (`crosslogic.settings`); this is the shape of the
deployment: which models, how many replicas, engine settings, request limits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EngineConfig(BaseModel):
    """vLLM engine settings for one model. `engine_kwargs` go to vLLM's engine arguments verbatim."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    enforce_eager: bool = False
    # Passed through to vLLM (e.g. gpu_memory_utilization, max_num_seqs, tensor_parallel_size).
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class ModelDeploymentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The name clients use in `model`.
    served_name: str = Field(min_length=1, max_length=200)
    # An HF model id, a local path, or a development-model alias (see `crosslogic.dev_models`).
    source: str = Field(min_length=1)
    task: Literal["generate", "embed"] = "generate"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    num_replicas: int = Field(default=1, ge=1)
    # Requests one engine replica accepts at once (Serve's max_ongoing_requests).
    max_ongoing_requests: int = Field(default=64, ge=1)
    # Ray actor options for each replica: num_cpus, num_gpus, memory, runtime_env ...
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    # Environment for the replica's process (e.g. VLLM_CPU_KVCACHE_SPACE on CPU nodes).
    env: dict[str, str] = Field(default_factory=dict)


class IngressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(default=1, ge=1)
    # Ray Serve's default (5) throttles an ingress that mostly waits on engines.
    max_ongoing_requests: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A request that fails before its first token is retried on another replica this many times.
    retries_before_first_token: int = Field(default=1, ge=0, le=3)
    # How the ingress's calls reach engine replicas: "grpc", Serve's direct gRPC channel to each
    # replica (measured on 2 cores: the hop to the first event 3.2 ms vs 6.1 ms p50), or "ray",
    # Ray actor calls with results through Ray's object store (Serve's default).
    engine_transport: Literal["grpc", "ray"] = "grpc"
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = "least_loaded_p2c"
    # How often engines report queue state and ingress replicas pull the router's view.
    engine_report_interval_s: float = Field(default=0.5, gt=0)
    view_refresh_interval_s: float = Field(default=0.2, gt=0)
    # An engine that has not reported for this long is treated as unknown (not as idle).
    stale_after_s: float = Field(default=5.0, gt=0)


class LimitsConfig(BaseModel):
    """Rate limiting (see `crosslogic.ratelimit`): Redis when REDIS_URL is set, else in-cluster."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # open: a Redis outage degrades to each replica enforcing its share (limit / replicas);
    # closed: answer 503 until Redis is back. Either way the switch back is automatic.
    fail_mode: Literal["open", "closed"] = "open"
    window_s: float = Field(default=60.0, gt=0, le=3600)
    redis_timeout_s: float = Field(default=0.25, gt=0, le=10)
    # A replica that dies with leases frees them within this; long streams renew every third of it.
    lease_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    namespace: str = Field(default="crosslogic:rl", pattern=r"^[A-Za-z0-9:_.-]+$")
    # On: a key (and tenant) with room to spare has its admission decided while its engine call
    # already starts; the first token still waits for the answer (crosslogic/api/headroom.py). Off
    # by default: on 2 cores, where the ingress, the limiter and the engine's scheduler share one
    # core, the overlapped admission slowed the dispatch by as much as it saved (measured: admit +
    # transit 4.3 vs 3.7 ms p50 with Redis at 1 client). Turn it on where the limiter's round trip is
    # mostly waiting (Redis across the network, ingress with cores to spare) and measure.
    overlap_admission: bool = False
    # Without Redis: the ingress reaches the in-cluster limiter actor over a persistent stream
    # (crosslogic/ratelimit/wire.py; admit 0.18 ms p50 on 2 cores) instead of Ray actor calls (1.3 ms).
    actor_stream: bool = True


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelDeploymentConfig] = Field(min_length=1)
    # Recorded on every usage row; one control plane serves one region's engines today.
    region: str = Field(default="local", min_length=1, max_length=64)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelDeploymentConfig]) -> list[ModelDeploymentConfig]:
        names = [m.served_name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate served_name: {', '.join(duplicates)}")
        return models

    def model(self, served_name: str) -> ModelDeploymentConfig | None:
        for m in self.models:
            if m.served_name == served_name:
                return m
        return None
