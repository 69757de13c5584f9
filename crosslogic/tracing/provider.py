"""One process's tracer: an OpenTelemetry SDK provider with a batch span processor and an OTLP/HTTP exporter.

The provider is ours, never installed as OpenTelemetry's global one: libraries in the same process
(Ray Serve, vLLM) keep their own tracing settings, and nothing they do adds spans to ours. Spans are
created with explicit parents (no context variables), which is also what makes them cheap.

Ingress replicas start root spans (sampled by `sample_ratio`, or by the client's sampled flag when
`follow_client_sampling`); engine replicas only ever continue a trace an ingress handed them, so
they follow their parent's decision and never start one.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Literal

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Tracer

from crosslogic.tracing.config import TracingConfig

logger = logging.getLogger(__name__)

Component = Literal["ingress", "engine"]
INSTRUMENTATION = "crosslogic"


@dataclass(frozen=True)
class Tracing:
    """What a process traces with; `shutdown` exports what is still queued (call it once, at exit)."""

    tracer: Tracer
    provider: TracerProvider
    component: Component

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self.provider.shutdown()


def sampler_for(config: TracingConfig, component: Component) -> Sampler:
    if component == "engine":
        # The parent is our ingress (trusted): record exactly what it records.
        return ParentBased(root=ALWAYS_OFF)
    ratio = TraceIdRatioBased(config.sample_ratio)
    if config.follow_client_sampling:
        return ParentBased(root=ratio)
    # The client's trace id is kept (its spans join ours), its sampled flag is not believed.
    return ParentBased(root=ratio, remote_parent_sampled=ratio, remote_parent_not_sampled=ratio)


def start_tracing(config: TracingConfig, component: Component) -> Tracing | None:
    """None when tracing is off: callers then skip every tracing step (no middleware, no spans)."""
    if not config.enabled:
        return None
    resource = Resource.create({
        "service.name": config.service_name,
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        "crosslogic.component": component,
    })
    exporter = OTLPSpanExporter(
        endpoint=config.endpoint,
        headers=config.headers or None,  # None: from OTEL_EXPORTER_OTLP_*HEADERS (config.py)
        timeout=config.export_timeout_s,
        compression=Compression.Gzip if config.compression == "gzip" else Compression.NoCompression,
    )
    provider = TracerProvider(resource=resource, sampler=sampler_for(config, component), shutdown_on_exit=True)
    provider.add_span_processor(BatchSpanProcessor(
        exporter,
        max_queue_size=config.max_queue_size,
        schedule_delay_millis=config.batch_delay_s * 1000,
        max_export_batch_size=config.max_export_batch_size,
        export_timeout_millis=config.export_timeout_s * 1000,
    ))
    # The endpoint only: headers may hold a credential.
    logger.info("tracing on: %s spans to %s (sample ratio %s)", component, config.endpoint, config.sample_ratio)
    return Tracing(tracer=provider.get_tracer(INSTRUMENTATION), provider=provider, component=component)
