"""The region admin API and CLI, in process: the real admin router and heartbeat route on real
PostgreSQL, with the live view a real RegionTable (what the router actor holds)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from heartbeat_support import MASTER, heartbeat, region_name, signed

from crosslogic.admin.deps import AdminDeps
from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier
from crosslogic.admin.local_secret import load_or_create_region_master_secret
from crosslogic.admin.router import build_admin_router
from crosslogic.admin.routes_regions import RegionsAdmin
from crosslogic.api.errors import install_error_handlers
from crosslogic.cli.main import main
from crosslogic.errors import ConfigError
from crosslogic.regions import registry
from crosslogic.regions.heartbeats import AcceptedHeartbeat, HeartbeatVerifier
from crosslogic.regions.protocol import HEARTBEAT_PATH
from crosslogic.regions.routes import build_heartbeat_router
from crosslogic.regions.signing import decode_secret, derive_region_secret, encode_secret
from crosslogic.regions.state import RegionTable
from crosslogic.settings import Settings, parse_region_master_secret
from tests.unit.admin.admin_support import ADMIN_SECRET, admin_token, assert_error, run_cli


@dataclass
class Plane:
    app: FastAPI
    table: RegionTable

    def client(self, scopes: str = "admin:write") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=("203.0.113.9", 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://cp.test",
                                 headers={"authorization": f"Bearer {admin_token('ops@example.com', scopes)}"})

    async def beat(self, name: str, secret_hex: str) -> httpx.Response:
        raw, headers = signed(decode_secret(secret_hex), heartbeat(name))
        async with self.client() as client:
            return await client.post(HEARTBEAT_PATH, content=raw, headers=headers)


async def _plane(db_pool: asyncpg.Pool, master: bytes | None, *, live: bool = True,
                 broken_live: bool = False) -> AsyncIterator[Plane]:
    table = RegionTable(missed_heartbeats=3)

    async def live_view() -> dict[str, dict[str, Any]]:
        if broken_live:
            raise ConnectionError("router actor restarting")
        return {name: view.model_dump(mode="json") for name, view in table.view(time.time()).items()}

    async def set_drained(name: str, drained: bool) -> None:
        table.set_operator_drained(name, drained)

    async def forget(name: str) -> None:
        table.forget(name)

    async def publish(accepted: AcceptedHeartbeat) -> None:
        table.report(accepted.heartbeat, time.time(), operator_drained=accepted.operator_drained)

    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=ADMIN_SECRET))
    heartbeats = HeartbeatVerifier(db_pool, master)
    regions = RegionsAdmin(master, live_view, set_drained, forget) if live else RegionsAdmin(master)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_admin_router(AdminDeps(pool=db_pool, verifier=verifier), regions))
    app.include_router(build_heartbeat_router(heartbeats, publish))
    yield Plane(app, table)
    await heartbeats.close()
    await verifier.aclose()


@pytest.fixture
async def plane(db_pool: asyncpg.Pool) -> AsyncIterator[Plane]:
    async for built in _plane(db_pool, MASTER):
        yield built


async def audit_actions(db: asyncpg.Pool, name: str) -> list[tuple[str, str, str]]:
    rows = await db.fetch(
        "SELECT action, result, after::text AS after FROM audit_log WHERE target_type = 'region' "
        "AND target_id = $1 AND result <> 'denied' ORDER BY id", name,
    )
    return [(r["action"], r["result"], r["after"]) for r in rows]


async def test_a_region_from_creation_to_deletion(plane: Plane, db_pool: asyncpg.Pool) -> None:
    name = region_name("eu")
    async with plane.client() as admin:
        created = await admin.post("/admin/v1/regions", json={"name": name})
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        assert secret == encode_secret(derive_region_secret(MASTER, name, 1))
        assert created.json()["region"]["state"] == "drained"
        assert created.json()["region"]["reason"] == "no heartbeat yet"
        assert_error(await admin.post("/admin/v1/regions", json={"name": name}), 409, "name")

        assert (await plane.beat(name, secret)).status_code == 200
        listed = (await admin.get("/admin/v1/regions")).json()
        [mine] = [r for r in listed["data"] if r["name"] == name]
        assert mine["state"] == "active" and mine["reason"] == ""
        assert mine["last_heartbeat_age_s"] < 5 and mine["replicas"][0]["waiting"] == 2
        assert mine["versions"] == heartbeat(name).versions.model_dump() and mine["models"] == ["smol"]

        drained = await admin.post(f"/admin/v1/regions/{name}/drain")
        assert drained.json()["state"] == "drained" and drained.json()["reason"] == "drained by an operator"
        assert plane.table.view(time.time())[name].state == "drained"  # pushed live
        assert (await plane.beat(name, secret)).json()["state"] == "drained"  # and persisted
        undrained = await admin.post(f"/admin/v1/regions/{name}/undrain")
        assert undrained.json()["state"] == "active" and not undrained.json()["operator_drained"]

        rotated = await admin.post(f"/admin/v1/regions/{name}/rotate-secret")
        assert rotated.status_code == 200 and rotated.json()["region"]["secret_generation"] == 2
        new_secret = rotated.json()["secret"]
        assert new_secret != secret
        assert (await plane.beat(name, secret)).json()["error"]["code"] == "invalid_region_signature"
        assert (await plane.beat(name, new_secret)).status_code == 200

        deleted = await admin.delete(f"/admin/v1/regions/{name}")
        assert deleted.json()["state"] == "disabled"
        assert name not in plane.table.view(time.time())
        assert (await plane.beat(name, new_secret)).json()["error"]["code"] == "region_disabled"
        assert (await admin.get(f"/admin/v1/regions/{name}")).json()["state"] == "disabled"

    actions = await audit_actions(db_pool, name)
    assert [(a, r) for a, r, _ in actions] == [
        ("region.create", "success"), ("region.create", "error"), ("region.drain", "success"),
        ("region.undrain", "success"), ("region.rotate_secret", "success"), ("region.disable", "success"),
    ]
    assert not any(secret in after or new_secret in after for _, _, after in actions)


async def test_refusals_of_the_admin_api(plane: Plane) -> None:
    async with plane.client() as admin:
        assert_error(await admin.post("/admin/v1/regions", json={"name": "EU West"}), 400, "name")
        assert_error(await admin.get("/admin/v1/regions/Bad_Name"), 400, "name")
        assert_error(await admin.get(f"/admin/v1/regions/{region_name('missing')}"), 404)
        assert_error(await admin.post(f"/admin/v1/regions/{region_name('missing')}/drain"), 404)
    async with plane.client(scopes="admin:read") as reader:
        assert (await reader.get("/admin/v1/regions")).status_code == 200
        assert_error(await reader.post("/admin/v1/regions", json={"name": region_name()}), 403)


async def test_without_a_master_secret_create_and_rotate_say_what_to_set(db_pool: asyncpg.Pool) -> None:
    async for plane in _plane(db_pool, None):
        name = region_name()
        async with plane.client() as admin:
            error = assert_error(await admin.post("/admin/v1/regions", json={"name": name}), 409)
            assert error["code"] == "region_master_secret_missing"
            assert "CROSSLOGIC_REGION_MASTER_SECRET" in error["message"]
        await registry.create_region(db_pool, name)
        async with plane.client() as admin:
            error = assert_error(await admin.post(f"/admin/v1/regions/{name}/rotate-secret"), 409)
            assert "CROSSLOGIC_REGION_MASTER_SECRET" in error["message"]
        secret = encode_secret(derive_region_secret(MASTER, name, 1))
        assert (await plane.beat(name, secret)).json()["error"]["code"] == "unknown_region"
        assert [(a, r) for a, r, _ in await audit_actions(db_pool, name)] == [
            ("region.create", "error"), ("region.rotate_secret", "error"),
        ]


@pytest.mark.parametrize("broken", [False, True])
async def test_without_a_live_view_the_registry_alone(db_pool: asyncpg.Pool, broken: bool) -> None:
    async for plane in _plane(db_pool, MASTER, live=broken, broken_live=broken):
        async with plane.client() as admin:
            created = await admin.post("/admin/v1/regions", json={"name": region_name()})
            region = created.json()["region"]
            assert region["state"] == "unknown" and region["reason"] == "the live view is unavailable"


async def test_cli_regions(plane: Plane, capsys: pytest.CaptureFixture[str]) -> None:
    name = region_name("cli")
    code, out, _ = await run_cli(plane.app, capsys, "admin", "regions", "create", name)
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["NAME", "STATE", "REASON"]
    secret = out.split("secret: ")[1].split()[0]
    assert secret == encode_secret(derive_region_secret(MASTER, name, 1)) and "shown once" in out
    assert (await plane.beat(name, secret)).status_code == 200
    code, out, _ = await run_cli(plane.app, capsys, "admin", "regions", "list", "--json")
    assert code == 0 and [r["state"] for r in json.loads(out)["data"] if r["name"] == name] == ["active"]
    code, out, _ = await run_cli(plane.app, capsys, "admin", "regions", "drain", name)
    assert code == 0 and out.splitlines()[1].split()[:2] == [name, "drained"]
    code, out, _ = await run_cli(plane.app, capsys, "admin", "regions", "undrain", name)
    assert code == 0 and out.splitlines()[1].split()[:2] == [name, "active"]
    code, out, _ = await run_cli(plane.app, capsys, "admin", "regions", "rotate-secret", name, "--json")
    assert code == 0 and json.loads(out)["secret"] == encode_secret(derive_region_secret(MASTER, name, 2))
    code, out, _ = await run_cli(plane.app, capsys, "admin", "regions", "delete", name)
    assert code == 0 and out.splitlines()[1].split()[:2] == [name, "disabled"]
    code, out, _ = await run_cli(plane.app, capsys, "admin", "regions", "show", name, "--json")
    assert code == 0 and json.loads(out)["state"] == "disabled"
    code, _, err = await run_cli(plane.app, capsys, "admin", "regions", "show", region_name("missing"))
    assert code == 1 and "404" in err


def test_master_secret_setting(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_region_master_secret("ab" * 32) == b"\xab" * 32
    with pytest.raises(ConfigError, match="CROSSLOGIC_REGION_MASTER_SECRET must be hex"):
        parse_region_master_secret("not hex")
    with pytest.raises(ConfigError, match="16 bytes; it must be at least 32"):
        parse_region_master_secret("ab" * 16)
    monkeypatch.setenv("CROSSLOGIC_REGION_MASTER_SECRET", "cd" * 40)
    secret = Settings.from_env().region_master_secret
    assert secret is not None and secret.get_secret_value() == b"\xcd" * 40
    assert "cdcd" not in repr(Settings.from_env())
    monkeypatch.setenv("CROSSLOGIC_REGION_MASTER_SECRET", "")
    assert Settings.from_env().region_master_secret is None
    # Any command reading the settings says so in one line, not a traceback.
    monkeypatch.setenv("CROSSLOGIC_REGION_MASTER_SECRET", "nope")
    assert main(["admin", "token"]) == 1
    assert capsys.readouterr().err == "crosslogic: CROSSLOGIC_REGION_MASTER_SECRET must be hex (e.g. `openssl rand -hex 32`)\n"


def test_local_stack_master_secret_file(tmp_path: Path) -> None:
    first = load_or_create_region_master_secret(tmp_path)
    path = tmp_path / "region-master-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(parse_region_master_secret(first)) == 32
    assert load_or_create_region_master_secret(tmp_path) == first  # reused across runs
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_region_master_secret(tmp_path)
    path.chmod(0o600)
    path.write_text("beef\n")
    with pytest.raises(ConfigError, match="CROSSLOGIC_REGION_MASTER_SECRET is 2 bytes"):
        load_or_create_region_master_secret(tmp_path)
