"""The test receiver is strict: it takes what the OTLP/HTTP exporter sends (gzip included) and
refuses anything else, so a test that passes against it passes against a real collector's receiver."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from crosslogic.tracing.config import TracingConfig
from crosslogic.tracing.provider import start_tracing
from tests.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.start()
    yield r
    r.stop()


def test_the_sdk_exporter_is_accepted_gzip_too(receiver: OtlpReceiver) -> None:
    for compression in ("none", "gzip"):
        tracing = start_tracing(TracingConfig(enabled=True, endpoint=receiver.url, compression=compression,
                                              headers={"x-scope-orgid": "tenant-a"}), "ingress")
        assert tracing is not None
        tracing.tracer.start_span(f"span-{compression}", attributes={"n": 1}).end()
        assert tracing.force_flush(10)
        tracing.shutdown()
    assert [(s.name, s.attributes) for s in receiver.spans()] == [("span-none", {"n": 1}), ("span-gzip", {"n": 1})]
    assert receiver.rejected == [] and receiver.accepted_requests == 2


def test_anything_else_is_refused(receiver: OtlpReceiver) -> None:
    base = receiver.url.removesuffix("/v1/traces")
    valid = ExportTraceServiceRequest().SerializeToString()
    bad_span = ExportTraceServiceRequest()
    span = bad_span.resource_spans.add().scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id, span.start_time_unix_nano, span.end_time_unix_nano = "x", b"abc", b"12345678", 1, 2
    protobuf = {"content-type": "application/x-protobuf"}
    cases = [
        (httpx.post(receiver.url, json={"resourceSpans": []}), 415),  # OTLP/JSON: not this receiver
        (httpx.post(receiver.url, content=valid, headers={"content-type": "text/plain"}), 415),
        (httpx.post(receiver.url, content=b"\xff\xff\xff not protobuf", headers=protobuf), 400),
        (httpx.post(receiver.url, content=bad_span.SerializeToString(), headers=protobuf), 400),
        (httpx.post(receiver.url, content=valid, headers={**protobuf, "content-encoding": "br"}), 415),
        (httpx.post(receiver.url, content=b"not gzip", headers={**protobuf, "content-encoding": "gzip"}), 400),
        (httpx.post(base + "/v1/metrics", content=valid, headers=protobuf), 404),
        (httpx.get(receiver.url), 405),
    ]
    assert [(r.status_code, expected) for r, expected in cases] == [(e, e) for _, e in cases]
    assert len(receiver.rejected) == len(cases) and receiver.spans() == []
    ok = httpx.post(receiver.url, content=gzip.compress(valid), headers={**protobuf, "content-encoding": "gzip"})
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/x-protobuf"
