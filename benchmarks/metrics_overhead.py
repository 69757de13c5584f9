"""What the request metrics cost per request (CPU on the ingress's event loop).

(i)   the observation, no Ray: `RequestMetricsMiddleware` around a minimal ASGI app that streams
      three chunks (start + identify + gateway + settled + sample), minus the same app without it;
(ii)  `RayRequestMetrics.observe_request` (the Ray record calls: requests, latency, tokens, queue
      wait, TTFT, TPOT, one routing decision) inside a Ray actor, as in an ingress replica, for a
      streamed sample (9 record calls) and a refused one (2);
(iii) `MetricsExporter.export_once` over the ingress's sources (per export interval, not per request).

A tiny local Ray (1 CPU, no dashboard, random GCS port, never 6379) is started and shut down: run it
under the shared lock (`flock /tmp/crosslogic-serve.lock .venv/bin/python benchmarks/metrics_overhead.py`).
Writes benchmarks/results/metrics_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from typing import Any

from asgi_stubs import empty_request, null_send, null_settle, per_call_us

from crosslogic.routing.hints import RoutingHints
from crosslogic.telemetry.middleware import RequestMetricsMiddleware
from crosslogic.telemetry.request_metrics import NullRequestMetrics, RequestSample, RoutingAttempt, observation

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "metrics_overhead.json")
SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
STREAMED = RequestSample(
    route="/v1/chat/completions", status=200, model="smollm2-135m", tenant=str(uuid.uuid4()), key="sk-abcd1234",
    latency_s=0.4, ttft_s=0.05, tpot_s=0.01, prompt_tokens=20, completion_tokens=64, queue_wait_s=0.001,
    attempts=(RoutingAttempt("local", "local"),),
)
REFUSED = RequestSample(
    route="/v1/chat/completions", status=401, model="unknown", tenant="unknown", key="unknown",
    latency_s=0.001, ttft_s=None, tpot_s=None, prompt_tokens=0, completion_tokens=0, queue_wait_s=None, attempts=(),
)


class _Outcome:  # what the relay hands the settle hook (crosslogic/api/relay.py Outcome's fields)
    status, prompt_tokens, completion_tokens = "finished", 20, 64

    def __init__(self) -> None:
        self.started_at = self.first_token_at = time.monotonic()
        self.finished_at = self.first_token_at + 0.5


class _Auth:
    tenant_id, key_prefix = uuid.uuid4(), "sk-abcd1234"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    observed = observation(scope)
    observed.identify(_Auth(), "smollm2-135m", None)  # type: ignore[arg-type]
    hints = RoutingHints()
    observed.hints.append(hints)
    hints.region = "local"
    await observed.settled(null_settle)(_Outcome())  # type: ignore[arg-type]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for _ in range(3):
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def bench_observation(calls: int) -> dict[str, float]:
    wrapped = RequestMetricsMiddleware(_app, sink=NullRequestMetrics())

    async def loop(app: Any) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await app(dict(SCOPE), empty_request, null_send)
        return time.perf_counter() - started

    runs = [(await loop(_app), await loop(wrapped)) for _ in range(5)]
    bare = statistics.median(r[0] for r in runs)
    observed = statistics.median(r[1] for r in runs)
    return {"bare_app_us": per_call_us(bare, calls), "with_middleware_us": per_call_us(observed, calls),
            "middleware_overhead_us": per_call_us(observed - bare, calls)}


def bench_ray(calls: int) -> dict[str, Any]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    @ray.remote(num_cpus=0)
    class Recorder:
        def measure(self, calls: int, per_key: bool) -> dict[str, float]:
            from crosslogic.metering.metrics import Metrics
            from deployments.ray_metrics import MetricsExporter, RayRequestMetrics

            sink = RayRequestMetrics(per_key_labels=per_key)
            out: dict[str, float] = {}
            for name, sample in (("streamed", STREAMED), ("refused", REFUSED)):
                sink.observe_request(sample)  # first call creates the series
                runs = []
                for _ in range(5):
                    started = time.perf_counter()
                    for _ in range(calls):
                        sink.observe_request(sample)
                    runs.append(time.perf_counter() - started)
                out[f"observe_{name}_us"] = per_call_us(statistics.median(runs), calls)
            ledger = Metrics("crosslogic_usage_ledger")
            ledger.inc("written_total", 10)
            exporter = MetricsExporter([ledger.snapshot, lambda: {"crosslogic_auth_cache_hits_total": 5.0}], [ledger])
            started = time.perf_counter()
            for _ in range(1000):
                ledger.inc("written_total", 1)
                ledger.observe("flush_seconds", 0.003)
                exporter.export_once()
            out["export_once_us"] = per_call_us(time.perf_counter() - started, 1000)
            return out

    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             namespace=f"metrics-bench-{uuid.uuid4().hex[:6]}", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}})
    try:
        recorder = Recorder.remote()  # type: ignore[attr-defined]
        return {
            "tenant_labels": ray.get(recorder.measure.remote(calls, False)),
            "per_key_labels": ray.get(recorder.measure.remote(calls, True)),
        }
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--no-ray", action="store_true", help="only the Ray-free part")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "calls": args.calls, "machine": platform.platform(), "cpus": os.cpu_count(),
        "observation": asyncio.run(bench_observation(args.calls)),
    }
    if not args.no_ray:
        result["ray_record"] = bench_ray(args.calls)
        streamed = result["ray_record"]["tenant_labels"]["observe_streamed_us"]
        result["per_streamed_request_us"] = round(result["observation"]["middleware_overhead_us"] + streamed, 3)
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
