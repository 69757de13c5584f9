"""Region control on the deployed stack: a region registered through the admin API heartbeats to the
ingress, reaches the router actor's live view (admin API and /ready, from any ingress replica), is
drained and disabled; forged and replayed heartbeats are refused and audited.

The heartbeats announce no model: the region can never be chosen for the other tests' requests.
"""

from __future__ import annotations

import time
import uuid

import httpx

from crosslogic.regions.protocol import HEARTBEAT_PATH, Heartbeat
from crosslogic.regions.signing import decode_secret, sign
from crosslogic.regions.versions import local_versions
from tests.serve.conftest import ServeStack


def _beat(stack: ServeStack, name: str, secret: bytes) -> tuple[httpx.Response, bytes, dict[str, str]]:
    body = Heartbeat(
        region=name, gateway_url="http://127.0.0.1:9", versions=local_versions(), interval_s=1.0, agent_id="serve-test"
    ).model_dump_json().encode()
    headers = sign(secret, purpose="agent", region=name, method="POST", path=HEARTBEAT_PATH, body=body)
    response = httpx.post(f"{stack.base_url}{HEARTBEAT_PATH}", content=body, headers=headers, timeout=30)
    return response, body, headers


def test_a_region_heartbeats_is_listed_drained_and_disabled(serve_stack: ServeStack) -> None:
    name = f"sv-{uuid.uuid4().hex[:8]}"
    created = serve_stack.admin("POST", "/regions", {"name": name})
    assert created.status_code == 201, created.text
    secret = decode_secret(created.json()["secret"])

    response, body, headers = _beat(serve_stack, name, secret)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "active"
    # Several ingress replicas: every one reads the router actor's view. (A replica whose call to the
    # actor times out on a starved machine shows "unknown", the registry alone: retried, bounded.)
    for _ in range(4):
        deadline = time.monotonic() + 30
        while (shown := serve_stack.admin("GET", f"/regions/{name}").json())["state"] == "unknown":
            assert time.monotonic() < deadline, shown
        assert shown["state"] == "active" and shown["agent_id"] == "serve-test", shown
        assert shown["versions"] == local_versions().model_dump()
    regions = serve_stack.ready()["dependencies"]["regions"]
    assert regions["ok"] and f"{name} active" in regions["detail"] and name in regions["data"]

    replayed = httpx.post(f"{serve_stack.base_url}{HEARTBEAT_PATH}", content=body, headers=headers, timeout=30)
    assert replayed.status_code == 401 and replayed.json()["error"]["code"] == "replayed_nonce"
    forged, _, _ = _beat(serve_stack, name, b"\x00" * 32)
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_region_signature"
    audit = serve_stack.admin("GET", f"/audit?target_type=region&target_id={name}&result=denied").json()["data"]
    assert {row["after"]["reason"] for row in audit} >= {"replayed_nonce", "bad_signature"}

    assert serve_stack.admin("POST", f"/regions/{name}/drain").json()["state"] == "drained"
    assert "drained by an operator" in serve_stack.ready()["dependencies"]["regions"]["detail"]
    assert _beat(serve_stack, name, secret)[0].json()["state"] == "drained"

    assert serve_stack.admin("DELETE", f"/regions/{name}").json()["state"] == "disabled"
    assert name not in serve_stack.ready()["dependencies"]["regions"]["data"]
    refused, _, _ = _beat(serve_stack, name, secret)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "region_disabled"


def test_a_silent_region_is_drained_after_its_missed_heartbeats(serve_stack: ServeStack) -> None:
    name = f"sv-{uuid.uuid4().hex[:8]}"
    secret = decode_secret(serve_stack.admin("POST", "/regions", {"name": name}).json()["secret"])
    assert _beat(serve_stack, name, secret)[0].status_code == 200
    deadline = time.monotonic() + 20
    while serve_stack.admin("GET", f"/regions/{name}").json()["state"] == "active":
        assert time.monotonic() < deadline, "a region silent for 3 intervals of 1 s stayed active"
        time.sleep(0.5)
    shown = serve_stack.admin("GET", f"/regions/{name}").json()
    assert shown["state"] == "drained" and "3 intervals of 1s" in shown["reason"], shown
    serve_stack.admin("DELETE", f"/regions/{name}")
