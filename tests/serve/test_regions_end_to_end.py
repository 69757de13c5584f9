"""Two regions on this machine beside the control plane (issue 11): each its own local Ray cluster with a
real SmolLM2 engine, a regional gateway and an agent beating to the real control plane (`serve_stack`).

`eu` speaks plain HTTP; `us` speaks TLS and requires the control plane's client certificate (mTLS),
both from the CA the serve stack trusts. One set of clusters serves every test of this module; the
last test kills `eu` mid-load, so it runs last (pytest keeps file order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crosslogic.localstack.ray_cluster import kill_tagged_processes
from crosslogic.localstack.region_stack import RegionStack
from crosslogic.regions.config import TlsClientConfig
from crosslogic.regions.protocol import GENERATE_PATH, HEARTBEAT_PATH, Heartbeat
from crosslogic.regions.signing import decode_secret, sign
from crosslogic.regions.versions import local_versions
from tests.serve.conftest import CHAT_MODEL, ServeStack

MESSAGES = [{"role": "user", "content": "Count from one to twenty, in words."}]
# The agents' default. (1 s flaked in CI on a loaded machine: a heartbeat or the ingress's view sync
# lagging past 3 intervals made a live region look silent, and a request preferring it went local.)
INTERVAL_S = 2.0


class Regions:
    def __init__(self, stack: ServeStack, eu: RegionStack, us: RegionStack) -> None:
        self.stack, self.eu, self.us = stack, eu, us

    def view(self, name: str) -> dict[str, Any]:
        return self.stack.admin("GET", f"/regions/{name}").json()

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Until every region's last heartbeat shows its replicas idle: a report from a busy moment
        (a previous test's burst) can make a preferred region look deeper than the spill-over
        threshold for one heartbeat interval."""
        deadline = time.monotonic() + timeout_s
        while any(r["running"] or r["waiting"] for s in (self.eu, self.us) for r in self.view(s.name)["replicas"]):
            assert time.monotonic() < deadline, [self.view(s.name) for s in (self.eu, self.us)]
            time.sleep(0.3)
        time.sleep(INTERVAL_S)  # and every ingress replica's copy of that view


def _log_lines(regions: Regions, request_ids: list[str], limit: int = 30) -> list[str]:
    """Every Ray log line (control plane and regions) naming one of these requests: the logs are gone
    once the suite ends, so a failure carries them."""
    dirs = [regions.stack.cluster.temp_dir, regions.eu.temp_dir, regions.us.temp_dir]
    found: list[str] = []
    for base in filter(None, dirs):
        for log in sorted(Path(str(base)).glob("session_2*/logs/**/*")):
            if not log.is_file() or log.is_symlink() or log.suffix not in (".log", ".err", ".out"):
                continue
            with contextlib.suppress(OSError):
                found += [f"{log.name}: {line[:300]}" for line in log.read_text(errors="replace").splitlines()
                          if any(rid in line for rid in request_ids)]
    return found[:limit]


def _deploy(region: RegionStack, errors: list[BaseException]) -> None:
    try:
        region.deploy_and_wait(timeout_s=900, progress=print)
    except BaseException as exc:  # reported by the fixture
        errors.append(exc)


@pytest.fixture(scope="module")
def regions(serve_stack: ServeStack) -> Iterator[Regions]:
    assert serve_stack.tls is not None
    tls = serve_stack.tls
    tmp = Path(tempfile.mkdtemp(prefix="clrg-"))
    suffix = uuid.uuid4().hex[:6]
    stacks: list[RegionStack] = []
    for name in (f"eu-{suffix}", f"us-{suffix}"):
        created = serve_stack.admin("POST", "/regions", {"name": name})
        assert created.status_code == 201, created.text
        secret = decode_secret(created.json()["secret"])
        mtls = name.startswith("us-")
        stacks.append(RegionStack(
            name=name, control_plane_url=serve_stack.base_url, secret=secret, interval_s=INTERVAL_S,
            temp_dir=str(tmp / name), num_cpus=2,
            tls_certfile=tls.server_cert if mtls else None, tls_keyfile=tls.server_key if mtls else None,
            client_ca=tls.ca_cert if mtls else None,
            probe_tls=TlsClientConfig(ca_bundle=tls.ca_cert, client_cert=tls.client_cert, client_key=tls.client_key),
        ))
    errors: list[BaseException] = []
    started = time.monotonic()
    try:
        # Ray's clusters one after the other (each `ray start` is quick; the engines are not).
        for s in stacks:
            s.launch(progress=print)
        # Then both deployments at once: each waits mostly on its engine's start-up.
        threads = [threading.Thread(target=_deploy, args=(s, errors)) for s in stacks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        print(f"two regions ready in {time.monotonic() - started:.0f}s")
        result = Regions(serve_stack, *stacks)
        deadline = time.monotonic() + 60
        while not all(result.view(s.name).get("state") == "active" and result.view(s.name).get("replicas")
                      for s in stacks):
            assert time.monotonic() < deadline, [result.view(s.name) for s in stacks]
            time.sleep(0.5)
        yield result
    finally:
        for s in stacks:
            s.stop()
            serve_stack.admin("DELETE", f"/regions/{s.name}")
        shutil.rmtree(tmp, ignore_errors=True)


def _chat(stack: ServeStack, *, region: str | None = None, key: str | None = None, max_tokens: int = 8,
          **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or stack.api_key}"}
    if region:
        headers["x-crosslogic-region"] = region
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": max_tokens, **extra}
    return httpx.post(f"{stack.openai_base}/chat/completions", json=body, headers=headers, timeout=120)


async def _usage_regions(database_url: str, request_ids: list[str]) -> dict[str, str]:
    import asyncpg

    deadline = time.monotonic() + 20
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            rows = await conn.fetch("SELECT request_id, region FROM usage_ledger WHERE request_id = ANY($1::text[])",
                                    request_ids)
            if len(rows) == len(request_ids) or time.monotonic() > deadline:
                return {r["request_id"]: r["region"] for r in rows}
            await asyncio.sleep(0.3)
    finally:
        await conn.close()


def test_both_regions_register_with_their_replicas_and_show_in_ready(regions: Regions) -> None:
    for region in (regions.eu, regions.us):
        shown = regions.view(region.name)
        assert shown["state"] == "active", shown
        assert shown["gateway_url"] == region.gateway_url
        assert [r["model"] for r in shown["replicas"]] == [CHAT_MODEL], shown
        assert shown["versions"] == local_versions().model_dump()
        # What its agent reported: the engine's card (the control plane lists and checks the model by
        # it) and the replica's capacity.
        assert [(c["served_name"], c["max_model_len"]) for c in shown["cards"]] == [(CHAT_MODEL, 2048)], shown
        assert shown["replicas"][0]["capacity"] == 64
    ready = regions.stack.ready()
    detail = ready["dependencies"]["regions"]["detail"]
    assert f"{regions.eu.name} active" in detail and f"{regions.us.name} active" in detail, detail
    assert ready["dependencies"][f"engine:{CHAT_MODEL}"]["ok"]


async def test_preference_is_honoured_and_usage_rows_carry_the_serving_region(
    regions: Regions, database_url: str
) -> None:
    regions.wait_idle()
    stack = regions.stack
    served: dict[str, str] = {}
    for name in (regions.eu.name, regions.us.name, "local"):
        for stream in (False, True):
            response = _chat(stack, region=name, stream=stream)
            assert response.status_code == 200, response.text
            assert response.headers["x-crosslogic-region"] == name, response.headers
            if stream:
                assert response.text.rstrip().endswith("data: [DONE]")
            served[response.headers["x-request-id"]] = name
    # A key's own preference, without the header.
    _, key_id, secret = stack.create_tenant_and_key(f"region-pref-{uuid.uuid4().hex[:6]}")
    updated = stack.admin("PATCH", f"/keys/{key_id}", {"preferred_region": regions.us.name})
    assert updated.status_code == 200, updated.text
    response = _chat(stack, key=secret)
    assert response.status_code == 200 and response.headers["x-crosslogic-region"] == regions.us.name
    served[response.headers["x-request-id"]] = regions.us.name
    assert await _usage_regions(database_url, list(served)) == served


async def test_traffic_spreads_over_regions_by_queue_depth(regions: Regions) -> None:
    stack = regions.stack
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 48, "ignore_eos": True, "stream": True}
    seen: dict[int, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=180, headers=stack.auth_headers) as http:

        async def one(i: int) -> str:
            state = seen[i] = {"lines": 0, "done": False, "ended": False}
            async with http.stream("POST", f"{stack.openai_base}/chat/completions", json=body) as resp:
                assert resp.status_code == 200, await resp.aread()
                state |= {"id": resp.headers["x-request-id"], "region": resp.headers["x-crosslogic-region"],
                          "replica": resp.headers.get("x-crosslogic-replica")}
                async for line in resp.aiter_lines():
                    state["lines"] += 1
                    state["done"] = state["done"] or line == "data: [DONE]"
                state["ended"] = True
                return str(state["region"])

        tasks = [asyncio.ensure_future(one(i)) for i in range(16)]
        done, pending = await asyncio.wait(tasks, timeout=120)
        # A stream that has not ended by now is the open defect (a stream that never ends): say where
        # it stood (its request id for the replica logs, whether its [DONE] came) before failing.
        for task in pending:
            task.cancel()
        if pending:
            stuck = [s for s in seen.values() if not s["ended"]]
            raise AssertionError(f"streams not ended after 120s: {stuck}; what the logs say of them: "
                                 f"{_log_lines(regions, [str(s.get('id')) for s in stuck])}")
        placements = Counter(task.result() for task in done)
    print(f"16 concurrent streams served by {dict(placements)}")
    # Local has two replicas, each region one: a burst deeper than the local queue spills to regions.
    assert len(placements) >= 2 and sum(n for r, n in placements.items() if r != "local") >= 2, placements


def test_errors_and_engine_refusals_from_a_region_match_a_local_engine(regions: Regions) -> None:
    regions.wait_idle()
    stack = regions.stack
    # An empty prompt passes our validation and is refused by vLLM itself: the same OpenAI error
    # whether the engine is local or two hops away.
    answers = {}
    for name in ("local", regions.eu.name, regions.us.name):
        response = httpx.post(f"{stack.openai_base}/completions", timeout=60,
                              json={"model": CHAT_MODEL, "prompt": "", "max_tokens": 4},
                              headers={**stack.auth_headers, "x-crosslogic-region": name})
        answers[name] = (response.status_code, response.json()["error"]["type"], response.json()["error"]["code"])
        # Answered by the region itself (a gateway failing the call would be retried elsewhere).
        assert response.headers.get("x-crosslogic-region") == name, (name, response.headers)
    assert len(set(answers.values())) == 1 and answers["local"][0] == 400, answers


def test_a_client_hang_up_aborts_the_remote_engine_request(regions: Regions) -> None:
    regions.wait_idle()
    stack, eu = regions.stack, regions.eu
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    headers = {**stack.auth_headers, "x-crosslogic-region": eu.name}
    with httpx.stream("POST", f"{stack.openai_base}/chat/completions", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["x-crosslogic-region"] == eu.name
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                break
    # The region's own replica report (through its agent) shows the request gone well before 1,500 tokens.
    deadline = time.monotonic() + 20
    while any(r["running"] or r["waiting"] for r in regions.view(eu.name)["replicas"]):
        assert time.monotonic() < deadline, regions.view(eu.name)
        time.sleep(0.5)


def test_a_gateway_refuses_callers_without_the_control_planes_credential(regions: Regions) -> None:
    eu, us, tls = regions.eu, regions.us, regions.stack.tls
    assert tls is not None
    body = json.dumps({"model": CHAT_MODEL, "endpoint": "chat", "request_id": "req_probe",
                       "body": {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 2}}).encode()
    unsigned = httpx.post(eu.gateway_url + GENERATE_PATH, content=body, timeout=30)
    assert unsigned.status_code == 401 and unsigned.json()["error"]["type"] == "invalid_request_error"
    forged = sign(b"\x01" * 32, purpose="gateway", region=eu.name, method="POST", path=GENERATE_PATH, body=body)
    assert httpx.post(eu.gateway_url + GENERATE_PATH, content=body, headers=forged, timeout=30).status_code == 401
    # A heartbeat's signature is not a gateway's (the direction is signed).
    as_agent = sign(eu.secret, purpose="agent", region=eu.name, method="POST", path=GENERATE_PATH, body=body)
    assert httpx.post(eu.gateway_url + GENERATE_PATH, content=body, headers=as_agent, timeout=30).status_code == 401
    # The mTLS region: no client certificate, no TLS session at all.
    no_cert = ssl.create_default_context(cafile=tls.ca_cert)
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(us.gateway_url + GENERATE_PATH, content=body, timeout=30, verify=no_cert).raise_for_status()
    # Plain HTTP to the TLS port: no answer either.
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(us.gateway_url.replace("https://", "http://") + GENERATE_PATH, content=body, timeout=30)
    # With the certificate but without the signature: still refused.
    with_cert = ssl.create_default_context(cafile=tls.ca_cert)
    with_cert.load_cert_chain(tls.client_cert, tls.client_key)
    assert httpx.post(us.gateway_url + GENERATE_PATH, content=body, timeout=30, verify=with_cert).status_code == 401


def test_regions_listen_on_loopback_only(regions: Regions) -> None:
    for region in (regions.eu, regions.us):
        assert region.cluster is not None
        found = region.cluster.listeners()
        assert any(item.port == int(region.gateway_url.rsplit(":", 1)[1]) for item in found), found
        assert all(item.loopback for item in found), [item for item in found if not item.loopback]


def test_a_mismatched_version_registration_is_refused_naming_both_sides(regions: Regions) -> None:
    stack, eu = regions.stack, regions.eu
    versions = local_versions().model_copy(update={"vllm": "0.1.0"})
    body = Heartbeat(region=eu.name, gateway_url=eu.gateway_url, versions=versions, interval_s=INTERVAL_S,
                     agent_id="forged-old-build").model_dump_json().encode()
    headers = sign(eu.secret, purpose="agent", region=eu.name, method="POST", path=HEARTBEAT_PATH, body=body)
    refused = httpx.post(f"{stack.base_url}{HEARTBEAT_PATH}", content=body, headers=headers, timeout=30)
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert "vllm" in message and "0.1.0" in message and local_versions().vllm in message, message
    audit = stack.admin("GET", f"/audit?target_type=region&target_id={eu.name}&result=denied").json()["data"]
    assert any(row["after"]["reason"] == "version_mismatch" for row in audit), audit
    # The live region was not disturbed by the refused beat.
    assert regions.view(eu.name)["agent_id"] != "forged-old-build"


async def test_killing_a_region_mid_load_fails_no_unstarted_request_and_drains_it(regions: Regions) -> None:
    """Runs last: `eu` does not come back."""
    regions.wait_idle()
    stack, eu = regions.stack, regions.eu
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 24, "stream": True}
    headers = {**stack.auth_headers, "x-crosslogic-region": eu.name}
    outcomes: Counter[str] = Counter()
    late_placements: Counter[str] = Counter()
    killed_at: float | None = None
    stop_at = time.monotonic() + 600

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            sent = time.monotonic()
            started_streaming = False
            try:
                async with http.stream("POST", f"{stack.openai_base}/chat/completions", json=body, headers=headers) as resp:
                    if resp.status_code != 200:
                        outcomes[f"status_{resp.status_code}_before_streaming"] += 1
                        continue
                    region = resp.headers["x-crosslogic-region"]
                    text = ""
                    async for line in resp.aiter_lines():
                        started_streaming = True
                        text += line + "\n"
                    if '"error"' in text:
                        outcomes["error_after_streaming_started"] += 1
                    else:
                        outcomes[f"ok_{'eu' if region == eu.name else 'elsewhere'}"] += 1
                    if killed_at is not None and sent > killed_at + 3 * INTERVAL_S + 2.0:
                        late_placements[region] += 1
            except httpx.HTTPError as exc:
                outcomes[f"{type(exc).__name__}_{'after' if started_streaming else 'before'}_streaming"] += 1

    async with httpx.AsyncClient(timeout=120) as http:
        clients = [asyncio.create_task(client(http)) for _ in range(4)]
        await asyncio.sleep(8)
        assert outcomes["ok_eu"] > 0, outcomes
        assert eu.cluster is not None
        # As a region dies (a lost node, a cut link): every process of its cluster killed at once,
        # no graceful drain of its streams.
        killed_at = time.monotonic()
        killed = await asyncio.to_thread(kill_tagged_processes, eu.cluster.cluster_id)
        print(f"eu: {killed} processes killed in {time.monotonic() - killed_at:.1f}s; outcomes so far {dict(outcomes)}")
        stop_at = time.monotonic() + 3 * INTERVAL_S + 10.0
        await asyncio.gather(*clients)
    print(f"outcomes {dict(outcomes)}; placements {3 * INTERVAL_S + 2:.0f}s after the kill: {dict(late_placements)}")
    # A stream the kill cut ends with an OpenAI error event (outcome error_after_streaming_started);
    # a request that had not started streaming never fails: it is retried in another region.
    failed_unstarted = {k: v for k, v in outcomes.items() if "before" in k}
    assert not failed_unstarted, outcomes
    assert outcomes["ok_elsewhere"] > 0 and sum(late_placements.values()) > 0, outcomes
    assert eu.name not in late_placements, late_placements
    shown = regions.view(eu.name)
    assert shown["state"] == "drained" and "no heartbeat" in shown["reason"], shown
