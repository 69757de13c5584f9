"""CrossLogic's metrics on `ray.util.metrics`: Ray exports them on each node's Prometheus endpoint,
prefixed `ray_` (counters also suffixed `_total`, histograms `_bucket`/`_sum`/`_count`).

- `RayRequestMetrics`: the ingress's per-request RED figures (crosslogic/telemetry).
- `MetricsExporter`: copies in-memory counters kept by core components (`Metrics` snapshots, plain
  attributes) every few seconds; names ending `_total` become Ray counters (incremented by the delta),
  the others gauges, `Metrics.observe` values histograms.
- `EngineGauges` and `RegionGauges`: queue state of local engine replicas and of regions.

Create them inside a replica or actor, never at import time (one set per process).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ray.util import metrics as ray_metrics

from crosslogic.metering.metrics import Metrics
from crosslogic.telemetry.request_metrics import RequestSample

logger = logging.getLogger("ray.serve")

# Seconds. End to end: an embedding in milliseconds up to a long generation.
LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
TTFT_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
TPOT_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
QUEUE_BOUNDARIES = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]
# What `Metrics.observe` records (usage-ledger flushes): database round trips.
OBSERVED_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class RayRequestMetrics:
    """`RequestMetricsSink` on Ray's metrics. Labels: route, model, tenant, status code and outcome
    (crosslogic/telemetry/request_metrics.py: a 200 stream that failed mid-way is outcome
    "stream_error"); `key` (the API key's prefix) only with `metrics.per_key_labels`."""

    def __init__(self, *, per_key_labels: bool = False) -> None:
        self._per_key = per_key_labels
        key = ("key",) if per_key_labels else ()
        self._requests = ray_metrics.Counter(
            "crosslogic_requests",
            description="Inference requests by route, model, tenant, HTTP status and outcome.",
            tag_keys=("route", "model", "tenant", "status", "outcome", *key),
        )
        self._latency = ray_metrics.Histogram(
            "crosslogic_request_latency_seconds", description="End to end, to the response's last byte.",
            boundaries=LATENCY_BOUNDARIES, tag_keys=("route", "model", "tenant"),
        )
        self._ttft = ray_metrics.Histogram(
            "crosslogic_ttft_seconds", description="Time to first token of streamed generations.",
            boundaries=TTFT_BOUNDARIES, tag_keys=("model", "tenant"),
        )
        self._tpot = ray_metrics.Histogram(
            "crosslogic_time_per_output_token_seconds",
            description="Streamed generations: (end - first token) / (output tokens - 1).",
            boundaries=TPOT_BOUNDARIES, tag_keys=("model", "tenant"),
        )
        self._queue = ray_metrics.Histogram(
            "crosslogic_queue_wait_seconds", description="Waiting for the rate-limit admission.",
            boundaries=QUEUE_BOUNDARIES, tag_keys=("model", "tenant"),
        )
        self._input = ray_metrics.Counter(
            "crosslogic_input_tokens", description="Prompt tokens processed.", tag_keys=("model", "tenant", *key),
        )
        self._output = ray_metrics.Counter(
            "crosslogic_output_tokens", description="Output tokens generated.", tag_keys=("model", "tenant", *key),
        )
        # Retries before the first token are attempts with outcome "retried": one series name that
        # exists as soon as requests flow, so a retries panel shows 0 rather than "no data".
        self._decisions = ray_metrics.Counter(
            "crosslogic_router_decisions",
            description="Where each attempt was sent (placement local or region) and whether it was retried.",
            tag_keys=("model", "placement", "region", "outcome"),
        )

    def observe_request(self, s: RequestSample) -> None:
        by_model = {"model": s.model, "tenant": s.tenant}
        by_key = {**by_model, "key": s.key} if self._per_key else by_model
        self._requests.inc(1, tags={**by_key, "route": s.route, "status": str(s.status), "outcome": s.outcome})
        self._latency.observe(s.latency_s, tags={**by_model, "route": s.route})
        if s.prompt_tokens > 0:
            self._input.inc(s.prompt_tokens, tags=by_key)
        if s.completion_tokens > 0:
            self._output.inc(s.completion_tokens, tags=by_key)
        if s.queue_wait_s is not None:
            self._queue.observe(s.queue_wait_s, tags=by_model)
        if s.ttft_s is not None:
            self._ttft.observe(s.ttft_s, tags=by_model)
        if s.tpot_s is not None:
            self._tpot.observe(s.tpot_s, tags=by_model)
        last = len(s.attempts) - 1
        for i, attempt in enumerate(s.attempts):
            self._decisions.inc(1, tags={"model": s.model, "placement": attempt.placement,
                                         "region": attempt.region, "outcome": "retried" if i < last else "final"})


Source = Callable[[], Mapping[str, float]]


class MetricsExporter:
    """Every `interval_s`, copies each source's values to Ray's metrics (see the module docstring).

    Counters are exported by delta: a source that restarted from zero (a new component instance)
    counts from its new value on, never negatively."""

    def __init__(self, sources: Iterable[Source] = (), observed: Iterable[Metrics] = ()) -> None:
        self._sources = list(sources)
        self._observed = list(observed)
        self._last: dict[str, float] = {}
        self._counters: dict[str, Any] = {}
        self._gauges: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}

    def add(self, source: Source | Metrics) -> None:
        """A `Metrics` (its snapshot and its observed values) or a function returning counters."""
        if isinstance(source, Metrics):
            self._sources.append(source.snapshot)
            self._observed.append(source)
        else:
            self._sources.append(source)

    def export_once(self) -> None:
        values: dict[str, float] = {}
        for source in self._sources:
            values.update(source())
        for name, value in values.items():
            if name.endswith("_total"):
                delta = value - self._last.get(name, 0.0)
                self._last[name] = value
                if delta < 0:
                    delta = value
                counter = self._counters.get(name)
                if counter is None:
                    # Ray appends `_total` itself: the series keeps the name the component gave it.
                    counter = self._counters[name] = ray_metrics.Counter(name[: -len("_total")], description=name)
                    if delta == 0:
                        counter.inc(1e-9)  # the series exists (at ~0) from the first export on
                if delta > 0:
                    counter.inc(delta)
            else:
                gauge = self._gauges.get(name)
                if gauge is None:
                    gauge = self._gauges[name] = ray_metrics.Gauge(name, description=name)
                gauge.set(float(value))
        for metrics in self._observed:
            for name, samples in metrics.drain().items():
                histogram = self._histograms.get(name)
                if histogram is None:
                    histogram = self._histograms[name] = ray_metrics.Histogram(
                        name, description=name, boundaries=OBSERVED_BOUNDARIES)
                for sample in samples:
                    histogram.observe(sample)

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                self.export_once()
            except Exception:  # a bad value must not end the export of all the others
                logger.exception("metrics export failed")
            await asyncio.sleep(interval_s)


class EngineGauges:
    """One engine replica's queue, as it reports it to the router (labels model, replica)."""

    def __init__(self, model: str, replica_id: str) -> None:
        self._tags = {"model": model, "replica": replica_id}
        keys = ("model", "replica")
        self._running = ray_metrics.Gauge("crosslogic_engine_running", description="Requests running.", tag_keys=keys)
        self._waiting = ray_metrics.Gauge("crosslogic_engine_waiting", description="Requests waiting.", tag_keys=keys)
        self._kv = ray_metrics.Gauge(
            "crosslogic_engine_kv_cache_usage", description="KV-cache use, 0 to 1.", tag_keys=keys)
        # What prefix-aware routing buys, per engine: prompt tokens looked up in the prefix cache and
        # found there (hit rate = hits / queries). The engine counts since its start; these add the
        # increase since the last report.
        self._prefix = {
            field: (ray_metrics.Counter(f"crosslogic_engine_{field}", description=text, tag_keys=keys), 0)
            for field, text in (("prefix_cache_queries", "Prompt tokens looked up in the prefix cache."),
                                ("prefix_cache_hits", "Prompt tokens found in the prefix cache."))
        }

    def set(self, stats: Mapping[str, Any]) -> None:
        self._running.set(float(stats.get("running", 0)), tags=self._tags)
        self._waiting.set(float(stats.get("waiting", 0)), tags=self._tags)
        self._kv.set(float(stats.get("kv_cache_usage", 0.0)), tags=self._tags)
        for field, (counter, seen) in self._prefix.items():
            total = int(stats.get(field, 0))
            if total > seen:
                counter.inc(float(total - seen), tags=self._tags)
            # Lower than seen: the engine restarted its count; count on from its new total.
            self._prefix[field] = (counter, total)


class RegionGauges:
    """Regions as the router actor sees them, summed per region and model (a region's replica ids
    are not labels: they come and go with its cluster). A region that disappears is set to zero."""

    def __init__(self) -> None:
        self._active = ray_metrics.Gauge(
            "crosslogic_region_active", description="1 while a region is active, 0 drained.", tag_keys=("region",))
        self._age = ray_metrics.Gauge(
            "crosslogic_region_heartbeat_age_seconds", description="Since the region's last heartbeat.",
            tag_keys=("region",))
        keys = ("region", "model")
        self._replicas = ray_metrics.Gauge("crosslogic_region_replicas", description="Replicas.", tag_keys=keys)
        self._running = ray_metrics.Gauge("crosslogic_region_running", description="Requests running.", tag_keys=keys)
        self._waiting = ray_metrics.Gauge("crosslogic_region_waiting", description="Requests waiting.", tag_keys=keys)
        self._known: set[tuple[str, str]] = set()

    def update(self, views: Mapping[str, Mapping[str, Any]]) -> None:
        seen: set[tuple[str, str]] = set()
        for name, view in views.items():
            self._active.set(1.0 if view.get("state") == "active" else 0.0, tags={"region": name})
            self._age.set(float(view.get("last_heartbeat_age_s", 0.0)), tags={"region": name})
            totals: dict[str, list[float]] = {}
            for replica in view.get("replicas", ()):
                row = totals.setdefault(replica["model"], [0.0, 0.0, 0.0])
                row[0] += 1
                row[1] += replica.get("running", 0)
                row[2] += replica.get("waiting", 0)
            for model, (count, running, waiting) in totals.items():
                tags = {"region": name, "model": model}
                self._replicas.set(count, tags=tags)
                self._running.set(running, tags=tags)
                self._waiting.set(waiting, tags=tags)
                seen.add((name, model))
        for name, model in self._known - seen:
            tags = {"region": name, "model": model}
            for gauge in (self._replicas, self._running, self._waiting):
                gauge.set(0.0, tags=tags)
            if name not in views:
                self._active.set(0.0, tags={"region": name})
        self._known = seen


# Counters that exist from the first export on, so dashboards show 0 rather than "no data".
LEDGER_COUNTERS = ("enqueued_total", "written_total", "dropped_total", "flush_errors_total", "rejected_total")
BILLING_COUNTERS = (
    "outbox_events_created_total", "meter_events_delivered_total", "meter_events_retried_total",
    "meter_events_duplicate_total", "meter_events_dead_lettered_total", "missing_customer_total",
)


def with_zeros(metrics: Metrics, counters: Iterable[str]) -> Source:
    zeros = {f"{metrics.prefix}_{name}": 0.0 for name in counters}
    return lambda: {**zeros, **metrics.snapshot()}


def ingress_exporter(recorder: Any, authenticator: Any) -> MetricsExporter:
    """The ingress's in-memory counters: the usage ledger's (buffer depth read live, flush durations)
    and the API-key cache's hits and misses (crosslogic/auth/key_authenticator.py)."""
    ledger: Metrics = recorder.metrics
    zeros = with_zeros(ledger, LEDGER_COUNTERS)
    return MetricsExporter(
        sources=[
            lambda: {**zeros(), f"{ledger.prefix}_buffered": float(recorder.pending)},
            lambda: {
                "crosslogic_auth_cache_hits_total": float(authenticator.hits),
                "crosslogic_auth_cache_misses_total": float(authenticator.misses),
            },
        ],
        observed=[ledger],
    )
