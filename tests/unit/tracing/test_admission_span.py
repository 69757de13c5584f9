"""An admission decided alongside the engine call (crosslogic/api/headroom.py) keeps its span open until
the decision lands: the span measures the limiter's round trip, and a late refusal marks it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from crosslogic.api.admission import AdmissionGate, Admitted
from crosslogic.errors import RateLimitError
from crosslogic.tracing.config import TracingConfig
from crosslogic.tracing.provider import start_tracing
from crosslogic.tracing.request_trace import RecordingTrace
from tests.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.start()
    yield r
    r.stop()


async def test_an_overlapped_admission_span_ends_with_its_decision(receiver: OtlpReceiver) -> None:
    tracing = start_tracing(TracingConfig(enabled=True, endpoint=receiver.url), "ingress")
    assert tracing is not None
    loop = asyncio.get_running_loop()
    outcomes = []
    for refused in (False, True):
        trace = RecordingTrace(tracing.tracer, tracing.tracer.start_span(f"request-{refused}"))
        decision: asyncio.Future[Admitted] = loop.create_future()
        gate = AdmissionGate(decision, overlapped=True)
        stage = trace.start("admission")
        trace.decided(stage, gate)
        await asyncio.sleep(0.05)  # the limiter's answer arrives while the engine call runs
        if refused:
            decision.set_exception(RateLimitError("too many requests"))
        else:
            decision.set_result(Admitted({}, None, None))
        await asyncio.sleep(0)  # the done callback runs on the loop
        trace.close(429 if refused else 200, None)
        outcomes.append(refused)
        if refused:
            with pytest.raises(RateLimitError):
                await gate.confirm()
    assert tracing.force_flush(10)
    tracing.shutdown()
    spans = [s for s in receiver.spans() if s.name == "admission"]
    assert len(spans) == 2
    for span, refused in zip(spans, outcomes, strict=True):
        assert span.attributes["crosslogic.admission.overlapped"] is True
        assert span.end_ns - span.start_ns >= 50_000_000  # open until the decision, not until admit() returned
        assert (span.status == "ERROR") is refused
        if refused:
            assert span.attributes["crosslogic.error_code"] == "rate_limit_exceeded"


async def test_a_decided_gate_calls_back_at_once() -> None:
    gate = AdmissionGate(Admitted({}, None, None))
    seen: list[BaseException | None] = []
    gate.when_decided(seen.append)
    assert seen == [None]  # synchronously: the span ends with admit(), not a loop turn later
