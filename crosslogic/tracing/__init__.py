"""OpenTelemetry tracing of /v1 requests, exported over OTLP/HTTP; off by default (`tracing:` in the
app config, crosslogic/tracing/config.py). No Ray import here: the deployments wire it.

- `provider`: a process's tracer (batch span processor, OTLP/HTTP exporter, sampler)
- `propagation`: W3C traceparent/tracestate from a client's headers, and the carrier to engines
- `middleware` + `request_trace`: the ingress's root span and a span per stage of the request
- `engine_span`: `engine.generate` in the engine replica, a child of the ingress's `engine.call`

Nothing is imported here on purpose: `crosslogic.config` imports `crosslogic.tracing.config`, which
must not pull in the rest (the request path's modules import crosslogic.config themselves).
"""
