"""Application configuration: what `serve_config.yaml` passes to the app builder as `args`.

Secrets and endpoints come from the environment (`crosslogic.settings`); this is the shape of the
deployment: which models, how many replicas, engine settings, request limits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crosslogic.alerts.config import AlertsConfig
from crosslogic.auth.config import KeyAuthConfig
from crosslogic.auth.throttle import AuthThrottleConfig
from crosslogic.batches.config import BatchesConfig
from crosslogic.engine.chat_templates import ChatTemplateRef
from crosslogic.engine.simulator_config import SimulatorConfig
from crosslogic.engine.tool_calling import ToolCallingConfig
from crosslogic.fairness.config import FairnessConfig
from crosslogic.regions.config import RegionsConfig
from crosslogic.routing.policy_config import AffinityOptions, ModelRouting, PolicyName
from crosslogic.telemetry.config import MetricsConfig
from crosslogic.tracing.config import TracingConfig


class EngineConfig(BaseModel):
    """vLLM engine settings for one model. `engine_kwargs` go to vLLM's engine arguments verbatim."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    enforce_eager: bool = False
    # Passed through to vLLM (e.g. gpu_memory_utilization, max_num_seqs, tensor_parallel_size).
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    # "simulator": crosslogic/engine/simulator.py, a timing model with no weights, for routing
    # benchmarks; never the default. Its settings in `simulator`.
    kind: Literal["vllm", "simulator"] = "vllm"
    simulator: SimulatorConfig | None = None
    # Instead of the checkpoint's own: a template shipped in crosslogic/engine/chat_templates, by
    # name (e.g. smollm2_tools), or an absolute path.
    chat_template: ChatTemplateRef | None = None
    # Function calling (tool_choice auto / required / named): vLLM's parser for the model's calls.
    tool_calling: ToolCallingConfig | None = None


# Who may reuse whose cached prompt prefixes (crosslogic/api/cache_salt.py): "tenant" (a tenant's own
# keys only), "key" (each API key alone) or "shared" (every tenant; a reused prefix prefills faster,
# so tenants can tell which prefixes others sent recently).
PrefixCacheScope = Literal["tenant", "key", "shared"]


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
    prefix_cache_scope: PrefixCacheScope = "tenant"
    # This model's routing policy and its options; what is unset comes from the app's `router`.
    router: ModelRouting = Field(default_factory=ModelRouting)


class IngressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(default=1, ge=1)
    # Ray Serve's default (5) throttles an ingress that mostly waits on engines.
    max_ongoing_requests: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A request that fails before its first token is retried on another replica this many times.
    retries_before_first_token: int = Field(default=1, ge=0, le=3)
    # How the ingress's calls reach engine replicas: "grpc", Serve's direct gRPC channel to each
    # replica (the faster hop to the first event: README, "Why the defaults"), or "ray", Ray actor
    # calls with results through Ray's object store (Serve's default).
    engine_transport: Literal["grpc", "ray"] = "grpc"
    # A started engine stream silent this long is aborted and ends with an `engine_stalled` error
    # (crosslogic/engine/stream_deadline.py); null: no bound. Engines emit a token per step, so only a
    # stuck transport or replica is this quiet.
    engine_stream_idle_timeout_s: float | None = Field(default=60.0, gt=0, le=3600)
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # crosslogic/routing/policies.py; a model's own `router.policy` wins over this.
    policy: PolicyName = "least_loaded_p2c"
    affinity: AffinityOptions = Field(default_factory=AffinityOptions)
    # How often engines report queue state and ingress replicas pull the router's view.
    engine_report_interval_s: float = Field(default=0.5, gt=0)
    view_refresh_interval_s: float = Field(default=0.2, gt=0)
    # The same while idle (crosslogic/idle_pacer.py): an idle engine re-sends unchanged figures only
    # this often, an ingress with no request for 2 s pulls the view only this often (a request ends
    # the wait). Both below stale_after_s, so an idle engine never looks unknown. Off by default
    # (equal to the busy intervals); 2.0 / 1.0 measured in README, "Why the defaults".
    idle_engine_report_interval_s: float = Field(default=0.5, gt=0)
    idle_view_refresh_interval_s: float = Field(default=0.2, gt=0)
    # An engine that has not reported for this long is treated as unknown (not as idle).
    stale_after_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _idle_within_staleness(self) -> RouterConfig:
        if self.idle_engine_report_interval_s < self.engine_report_interval_s:
            raise ValueError("idle_engine_report_interval_s must be at least engine_report_interval_s")
        if self.idle_view_refresh_interval_s < self.view_refresh_interval_s:
            raise ValueError("idle_view_refresh_interval_s must be at least view_refresh_interval_s")
        if self.idle_engine_report_interval_s >= self.stale_after_s:
            raise ValueError("idle_engine_report_interval_s must be below stale_after_s "
                             "(an idle engine would look unknown between its reports)")
        return self

    def for_model(self, model: ModelDeploymentConfig) -> RouterConfig:
        """This router section with the model's own policy settings applied."""
        own = model.router
        return self.model_copy(update={
            "policy": own.policy or self.policy, "affinity": own.affinity or self.affinity})


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
    # core, the overlapped admission slowed the dispatch by as much as it saved (README, "Why the
    # defaults"). Turn it on where the limiter's round trip is mostly waiting (Redis across the
    # network, ingress with cores to spare) and measure.
    overlap_admission: bool = False
    # Without Redis: the ingress reaches the in-cluster limiter actor over a persistent stream
    # (crosslogic/ratelimit/wire.py) instead of Ray actor calls: several times cheaper per admission
    # (README, "Why the defaults").
    actor_stream: bool = True
    # That stream serves only callers proving its per-actor secret (HMAC handshake); connections beyond
    # this many are closed at once, and one without a frame for this long is closed (clients ping).
    stream_max_connections: int = Field(default=256, ge=1, le=65_536)
    stream_idle_timeout_s: float = Field(default=300.0, ge=1, le=86_400)
    # Bounds the limiter's memory per key and tenant: requests held in one window and concurrent
    # leases; limits below it stay exact, a larger (or no) limit acts as this ceiling.
    max_entries_per_subject: int = Field(default=200_000, ge=1, le=10_000_000)


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelDeploymentConfig] = Field(min_length=1)
    # This cluster's own region name, recorded on usage rows its local engines served (a row served by
    # a remote region carries that region's name).
    region: str = Field(default="local", min_length=1, max_length=64)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # Failed API-key and admin-token attempts per client address and key prefix (429 past a budget).
    auth_throttle: AuthThrottleConfig = Field(default_factory=AuthThrottleConfig)
    # API-key lookups: their timeout, and how long cached keys are served through a database outage.
    auth: KeyAuthConfig = Field(default_factory=KeyAuthConfig)
    # Engines in other Ray clusters (crosslogic/regions): heartbeats, drain, spill-over, TLS to gateways.
    regions: RegionsConfig = Field(default_factory=RegionsConfig)
    # Request metrics' labels and how often in-memory counters reach Ray's metrics (crosslogic/telemetry).
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    # Where alerts go besides the log (crosslogic/alerts): webhook, PagerDuty; none by default.
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    # OpenTelemetry spans per request and stage, exported over OTLP/HTTP (crosslogic/tracing); off by default.
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    # Per-tenant weighted fair shares of a saturated model's engine slots (crosslogic/fairness); off by default.
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    # The Batch API (crosslogic/batches): file limits and storage, runner concurrency, price multiplier.
    batches: BatchesConfig = Field(default_factory=BatchesConfig)

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
