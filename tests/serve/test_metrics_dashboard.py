"""The dashboard's every panel has data: traffic on the deployed stack (streamed and non-streamed chat,
an embedding, a 401, a 429, a region heartbeat), then the REAL Prometheus endpoints of the local Ray
cluster (each node's metrics export port, as Ray's own service-discovery file lists them for
Prometheus) are scraped until every metric name each panel's PromQL reads is there.

The region announces a model nobody requests, so it is never chosen for a request; it is disabled at
the end.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

from crosslogic.regions.protocol import HEARTBEAT_PATH, Heartbeat, RemoteReplica
from crosslogic.regions.signing import decode_secret, sign
from crosslogic.regions.versions import local_versions
from tests.dashboard_queries import load_dashboard, panel_metrics
from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

MESSAGES = [{"role": "user", "content": "Count from one to ten."}]
# Ray flushes custom metrics to its agent every few seconds; the billing actor exports every 10 s.
SCRAPE_DEADLINE_S = 120
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def _targets(stack: ServeStack) -> list[str]:
    """Ray's Prometheus targets for this cluster: the file Ray writes for Prometheus's file-based
    service discovery (`ray metrics launch-prometheus` reads it)."""
    assert stack.cluster.temp_dir
    path = Path(stack.cluster.temp_dir) / "session_latest" / "prom_metrics_service_discovery.json"
    return [target for group in json.loads(path.read_text()) for target in group["targets"]]


def _scrape(stack: ServeStack) -> tuple[dict[str, list[tuple[str, float]]], dict[str, str]]:
    """name -> [(labels, value)], and name -> its `# TYPE`, over every target."""
    samples: dict[str, list[tuple[str, float]]] = defaultdict(list)
    types: dict[str, str] = {}
    for target in _targets(stack):
        try:
            text = httpx.get(f"http://{target}/metrics", timeout=10).text
        except httpx.HTTPError:
            continue  # a target of the file not up (yet)
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
            elif (match := _SAMPLE.match(line)) is not None:
                samples[match.group(1)].append((match.group(2) or "", float(match.group(3))))
    return samples, types


def _total(samples: dict[str, list[tuple[str, float]]], name: str, *labels: str) -> float:
    return sum(value for found, value in samples.get(name, []) if all(label in found for label in labels))


def _traffic(stack: ServeStack, secret: str, limited: str) -> None:
    headers = {"authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=stack.base_url, timeout=120, headers=headers) as client:
        for _ in range(2):
            with client.stream("POST", "/v1/chat/completions", json={
                "model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 12, "stream": True,
                "stream_options": {"include_usage": True},
            }) as stream:
                assert stream.status_code == 200
                assert "[DONE]" in "".join(stream.iter_text())
        plain = client.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 4})
        assert plain.status_code == 200, plain.text
        embedded = client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "metrics"})
        assert embedded.status_code == 200, embedded.text
        refused = client.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES},
                              headers={"authorization": "Bearer sk-not-a-key"})
        assert refused.status_code == 401
        limited_headers = {"authorization": f"Bearer {limited}"}
        statuses = [client.post("/v1/chat/completions", headers=limited_headers, json={
            "model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 1}).status_code for _ in range(2)]
        assert statuses == [200, 429], statuses


def _beat_region(stack: ServeStack) -> str:
    name = f"mx-{uuid.uuid4().hex[:8]}"
    created = stack.admin("POST", "/regions", {"name": name})
    assert created.status_code == 201, created.text
    body = Heartbeat(
        region=name, gateway_url="http://127.0.0.1:9", models=["metrics-probe-model"],
        replicas=[RemoteReplica(replica_id="probe-0", model="metrics-probe-model", running=1, waiting=2)],
        versions=local_versions(), interval_s=120.0, agent_id="metrics-test",
    ).model_dump_json().encode()
    headers = sign(decode_secret(created.json()["secret"]), purpose="agent", region=name, method="POST",
                   path=HEARTBEAT_PATH, body=body)
    beat = httpx.post(f"{stack.base_url}{HEARTBEAT_PATH}", content=body, headers=headers, timeout=30)
    assert beat.status_code == 200, beat.text
    return name


def test_every_dashboard_panel_has_its_series_after_traffic(serve_stack: ServeStack) -> None:
    tenant, _, secret = serve_stack.create_tenant_and_key(f"metrics-{uuid.uuid4().hex[:6]}")
    _, _, limited = serve_stack.create_tenant_and_key(f"metrics-rpm-{uuid.uuid4().hex[:6]}", rpm=1)
    region = _beat_region(serve_stack)
    try:
        _traffic(serve_stack, secret, limited)
        wanted = panel_metrics(load_dashboard())
        deadline = time.monotonic() + SCRAPE_DEADLINE_S
        while True:
            samples, types = _scrape(serve_stack)
            missing = {title: sorted(names - set(samples)) for title, names in wanted.items() if names - set(samples)}
            ours = f'tenant="{tenant}"'
            # Every answer of the traffic counted (3 chats and an embedding: 4 200s, maybe from both
            # ingress replicas, whose exports are seconds apart), the 429 and the 401 too.
            counted = _total(samples, "ray_crosslogic_requests_total", ours, 'status="200"')
            looked_up = _total(samples, "ray_crosslogic_engine_prefix_cache_queries_total", f'model="{CHAT_MODEL}"')
            if (not missing and counted >= 4 and _total(samples, "ray_crosslogic_requests_total", 'status="429"') >= 1
                    and _total(samples, "ray_crosslogic_requests_total", 'status="401"') >= 1 and looked_up > 0):
                break
            assert time.monotonic() < deadline, f"panels without their series after {SCRAPE_DEADLINE_S}s: {missing}"
            time.sleep(3)
    finally:
        serve_stack.admin("DELETE", f"/regions/{region}")

    # The figures behind the panels are this traffic's: labels, statuses, tokens, TTFT of the streams.
    assert _total(samples, "ray_crosslogic_requests_total", ours, 'route="/v1/chat/completions"', 'status="200"') >= 3
    assert _total(samples, "ray_crosslogic_requests_total", ours, 'route="/v1/embeddings"', f'model="{EMBED_MODEL}"') >= 1
    assert _total(samples, "ray_crosslogic_requests_total", 'status="401"', 'tenant="unknown"') >= 1
    assert _total(samples, "ray_crosslogic_ttft_seconds_count", ours, f'model="{CHAT_MODEL}"') >= 2
    assert _total(samples, "ray_crosslogic_time_per_output_token_seconds_count", ours) >= 2
    assert _total(samples, "ray_crosslogic_output_tokens_total", ours) >= 3
    assert _total(samples, "ray_crosslogic_router_decisions_total", 'placement="local"', 'outcome="final"') >= 4
    assert _total(samples, "ray_crosslogic_region_waiting", f'region="{region}"') >= 0
    # The engines' prefix cache, as counters (prompt tokens looked up; hits never exceed them).
    assert types.get("ray_crosslogic_engine_prefix_cache_queries_total", types.get(
        "ray_crosslogic_engine_prefix_cache_queries")) == "counter"
    assert 0 <= _total(samples, "ray_crosslogic_engine_prefix_cache_hits_total", f'model="{CHAT_MODEL}"') <= looked_up
    # No API key label unless metrics.per_key_labels is set.
    assert all('key="' not in labels for labels, _ in samples["ray_crosslogic_requests_total"])
    assert all('key_prefix="' not in labels for labels, _ in samples["ray_crosslogic_ratelimit_decisions_total"])
    # The billing actor's counters are counters now (they were exported as gauges).
    for name in ("ray_crosslogic_billing_meter_events_delivered_total",
                 "ray_crosslogic_billing_meter_events_dead_lettered_total", "ray_crosslogic_usage_ledger_written_total"):
        kind = types.get(name) or types.get(name.removesuffix("_total"))  # TYPE names the family
        assert kind == "counter", (name, kind)
