"""Heartbeats through the real route, verifier and PostgreSQL: accepted, or refused with the right
status and code and an audit row; floods of refusals stay a few audit rows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from heartbeat_support import (
    MASTER,
    HeartbeatApp,
    denied_rows,
    heartbeat,
    heartbeat_app,
    now,
    region_name,
    secret_of,
    signed,
)

from crosslogic.auth.throttle import AuthThrottleConfig, FailedAuthThrottle, FailureBudget
from crosslogic.regions import registry
from crosslogic.regions.config import RegionsConfig
from crosslogic.regions.heartbeats import HeartbeatVerifier
from crosslogic.regions.protocol import Heartbeat, VersionSet


@pytest.fixture
async def hb(db_pool: asyncpg.Pool) -> AsyncIterator[HeartbeatApp]:
    verifier = HeartbeatVerifier(db_pool, MASTER, config=RegionsConfig(clock_skew_s=30))
    yield heartbeat_app(verifier)
    await verifier.close()


@pytest.fixture
async def region(db_pool: asyncpg.Pool) -> str:
    name = region_name()
    await registry.create_region(db_pool, name)
    return name


def assert_refused(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert "Traceback" not in response.text
    return error


async def test_a_good_heartbeat_is_accepted_published_and_recorded(
    hb: HeartbeatApp, region: str, db_pool: asyncpg.Pool
) -> None:
    response = await hb.post(*signed(secret_of(region), heartbeat(region)))
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["region"] == region and reply["state"] == "active" and abs(reply["accepted_at"] - now()) < 5
    [accepted] = hb.published
    assert accepted.heartbeat.region == region and accepted.heartbeat.replicas[0].waiting == 2
    assert accepted.operator_drained is False and accepted.secret_generation == 1
    record = await registry.get_region(db_pool, region)
    assert record.last_heartbeat_at is not None and record.last_agent_id == "agent-1"
    assert record.last_gateway_url == "https://127.0.0.1:9443" and record.last_versions == heartbeat(region).versions
    assert await denied_rows(db_pool, region) == []


async def test_an_operator_drain_travels_with_every_heartbeat(
    hb: HeartbeatApp, region: str, db_pool: asyncpg.Pool
) -> None:
    await registry.set_drained(db_pool, region, True)
    response = await hb.post(*signed(secret_of(region), heartbeat(region)))
    assert response.json()["state"] == "drained"
    assert hb.published[-1].operator_drained is True


@pytest.mark.parametrize(
    ("case", "status", "code", "reason"),
    [
        ("forged", 401, "invalid_region_signature", "bad_signature"),
        ("skewed", 401, "region_clock_skew", "clock_skew"),
        ("tampered", 401, "invalid_region_signature", "bad_signature"),
        ("unsigned", 401, "missing_region_signature", "missing_signature"),
        ("versions", 409, "region_version_mismatch", "version_mismatch"),
        ("body_region", 400, "region_mismatch", "region_mismatch"),
        ("bad_body", 400, "invalid_heartbeat", "invalid_heartbeat"),
    ],
)
async def test_refusals_have_their_status_code_and_an_audit_row(
    hb: HeartbeatApp, region: str, db_pool: asyncpg.Pool, case: str, status: int, code: str, reason: str
) -> None:
    secret = secret_of(region)
    body = heartbeat(region)
    if case == "forged":
        raw, headers = signed(secret_of(region, master=b"x" * 32), body)
    elif case == "skewed":
        raw, headers = signed(secret, body, now=now() - 31)
    elif case == "tampered":
        raw, headers = signed(secret, body)
        raw = raw.replace(b"agent-1", b"agent-2")
    elif case == "unsigned":
        raw, headers = body.model_dump_json().encode(), {"content-type": "application/json"}
    elif case == "versions":
        ours = body.versions
        raw, headers = signed(secret, heartbeat(region, versions=VersionSet(
            ray=ours.ray, vllm="0.0.1", torch=ours.torch, crosslogic=ours.crosslogic)))
    elif case == "body_region":
        raw, headers = signed(secret, heartbeat(region_name()), region=region)
    else:
        raw, headers = signed(secret, b'{"region": 1}', region=region)
    response = await hb.post(raw, headers, address="198.51.100.20")
    error = assert_refused(response, status, code)
    if case == "versions":
        # Both sides' versions, by name.
        assert f"vllm: control plane {body.versions.vllm}, region 0.0.1" in error["message"]
        assert f"Control plane: ray {body.versions.ray}" in error["message"] and "vllm 0.0.1" in error["message"]
    if case == "skewed":
        assert "window ±30s" in error["message"]
    assert hb.published == []
    if case != "unsigned":  # without headers the refusal names no region
        [row] = await denied_rows(db_pool, region)
        assert row["after"] == {"reason": reason} and row["client_addr"] == "198.51.100.20"
        assert row["actor"] == "region-agent" and row["action"] == "region.heartbeat"


async def test_a_replayed_nonce_is_refused_even_on_another_replica(
    db_pool: asyncpg.Pool, region: str
) -> None:
    first = HeartbeatVerifier(db_pool, MASTER)
    second = HeartbeatVerifier(db_pool, MASTER)
    try:
        raw, headers = signed(secret_of(region), heartbeat(region))
        assert (await heartbeat_app(first).post(raw, headers)).status_code == 200
        assert_refused(await heartbeat_app(first).post(raw, headers), 401, "replayed_nonce")
        assert_refused(await heartbeat_app(second).post(raw, headers), 401, "replayed_nonce")
        reasons = [row["after"]["reason"] for row in await denied_rows(db_pool, region)]
        assert reasons == ["replayed_nonce", "replayed_nonce"]
    finally:
        await first.close()
        await second.close()


async def test_unknown_and_disabled_regions_are_refused(
    hb: HeartbeatApp, region: str, db_pool: asyncpg.Pool
) -> None:
    stranger = region_name("nobody")
    assert_refused(await hb.post(*signed(secret_of(stranger), heartbeat(stranger))), 401, "unknown_region")
    assert [r["after"]["reason"] for r in await denied_rows(db_pool, stranger)] == ["unknown_region"]

    await registry.disable_region(db_pool, region)
    assert_refused(await hb.post(*signed(secret_of(region), heartbeat(region))), 401, "region_disabled")
    # A stranger does not learn that the region exists but is disabled.
    forged = secret_of(region, master=b"h" * 32)
    assert_refused(await hb.post(*signed(forged, heartbeat(region))), 401, "invalid_region_signature")
    reasons = [r["after"]["reason"] for r in await denied_rows(db_pool, region)]
    assert reasons == ["region_disabled", "bad_signature"]


async def test_rotating_the_secret_kills_the_old_one(hb: HeartbeatApp, region: str, db_pool: asyncpg.Pool) -> None:
    assert (await hb.post(*signed(secret_of(region), heartbeat(region)))).status_code == 200
    rotated = await registry.rotate_generation(db_pool, region)
    assert rotated.secret_generation == 2
    assert_refused(await hb.post(*signed(secret_of(region, 1), heartbeat(region))), 401, "invalid_region_signature")
    assert (await hb.post(*signed(secret_of(region, 2), heartbeat(region)))).status_code == 200
    assert hb.published[-1].secret_generation == 2


async def test_without_a_master_secret_every_region_is_unknown(db_pool: asyncpg.Pool, region: str) -> None:
    verifier = HeartbeatVerifier(db_pool, None)
    try:
        response = await heartbeat_app(verifier).post(*signed(secret_of(region), heartbeat(region)))
        assert_refused(response, 401, "unknown_region")
    finally:
        await verifier.close()


async def test_an_oversized_body_is_413(hb: HeartbeatApp, region: str) -> None:
    raw, headers = signed(secret_of(region), b"x" * ((1 << 20) + 1), region=region)
    assert_refused(await hb.post(raw, headers), 413, "request_too_large")


async def test_a_flood_of_forged_heartbeats_costs_a_few_audit_rows(
    hb: HeartbeatApp, region: str, db_pool: asyncpg.Pool
) -> None:
    forged = secret_of(region, master=b"f" * 32)
    for _ in range(300):
        response = await hb.post(*signed(forged, heartbeat(region)), address="198.51.100.66")
        assert response.status_code == 401
    assert [(r["after"]["reason"], r["attempts"]) for r in await denied_rows(db_pool, region)] == [
        ("bad_signature", 1)
    ]
    await hb.verifier.close()  # closes the window: one summary row for the 299 repeats
    rows = await denied_rows(db_pool, region)
    assert [(r["after"]["reason"], r["attempts"]) for r in rows] == [("bad_signature", 1), ("bad_signature", 299)]


async def test_failed_heartbeats_are_throttled_per_address(region: str, db_pool: asyncpg.Pool) -> None:
    throttle = FailedAuthThrottle(AuthThrottleConfig(per_address=FailureBudget(failures=5)))
    verifier = HeartbeatVerifier(db_pool, MASTER, throttle=throttle)
    app = heartbeat_app(verifier)

    async def post(secret: bytes, body: Heartbeat, address: str = "192.0.2.8") -> httpx.Response:
        return await app.post(*signed(secret, body), address=address)

    good, forged = secret_of(region), secret_of(region, master=b"g" * 32)
    old_vllm = heartbeat(region, versions=heartbeat(region).versions.model_copy(update={"vllm": "0.0.1"}))
    try:
        # Heartbeats that authenticate never spend the budget, even when refused afterwards.
        assert [(await post(good, heartbeat(region))).status_code for _ in range(8)] == [200] * 8
        assert [(await post(good, old_vllm)).status_code for _ in range(8)] == [409] * 8
        assert [(await post(forged, heartbeat(region))).status_code for _ in range(8)] == [401] * 5 + [429] * 3
        throttled = await post(good, heartbeat(region))
        error = assert_refused(throttled, 429, "too_many_failed_auth")
        assert "retry" in error["message"] and int(throttled.headers["retry-after"]) >= 1
        # Another address is not affected.
        assert (await post(good, heartbeat(region), address="192.0.2.9")).status_code == 200
        reasons = [r["after"]["reason"] for r in await denied_rows(db_pool, region)]
        assert reasons == ["version_mismatch", "bad_signature", "throttled"]
    finally:
        await verifier.close()
