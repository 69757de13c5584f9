"""The operator CLI against the admin app: tables, --json, errors, and `admin token`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from admin_support import run_cli
from fastapi import FastAPI

from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier
from crosslogic.admin.local_secret import load_or_create_local_secret
from crosslogic.cli.admin_client import format_table
from crosslogic.cli.main import main


async def test_tenant_and_key_commands(admin_app: FastAPI, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    code, out, _ = await run_cli(admin_app, capsys, "tenants", "create", name, "--rpm", "30", "--json")
    assert code == 0
    tenant: dict[str, Any] = json.loads(out)
    assert tenant["name"] == name and tenant["rpm"] == 30

    code, out, _ = await run_cli(admin_app, capsys, "tenants", "update", tenant["id"], "--rpm", "none", "--tpm", "500")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["ID", "NAME", "STATUS", "RPM"]
    assert row.split()[:5] == [tenant["id"], name, "active", "-", "500"]

    code, out, _ = await run_cli(admin_app, capsys, "tenants", "suspend", tenant["id"])
    assert code == 0 and "suspended" in out
    code, out, _ = await run_cli(admin_app, capsys, "tenants", "list", "--status", "suspended", "--limit", "100")
    assert code == 0 and name in out

    code, out, _ = await run_cli(admin_app, capsys, "keys", "create", tenant["id"], "--name", "ci", "--model", "m1")
    assert code == 0
    secret = out.split("secret: ")[1].split()[0]
    assert secret.startswith("sk-cl-") and "shown once" in out
    code, out, _ = await run_cli(admin_app, capsys, "keys", "list", tenant["id"], "--json")
    key = json.loads(out)["data"][0]
    assert secret not in out and key["scopes"] == ["m1"]
    code, out, _ = await run_cli(admin_app, capsys, "keys", "revoke", key["id"])
    assert code == 0 and key["id"] in out

    code, out, _ = await run_cli(admin_app, capsys, "audit", "--target-id", tenant["id"], "--json")
    actions = [e["action"] for e in json.loads(out)["data"]]
    assert actions == ["tenant.suspend", "tenant.update", "tenant.create"]
    assert {e["actor"] for e in json.loads(out)["data"]} == {"cli-test"}


async def test_api_errors_are_one_line_and_exit_1(
    admin_app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(admin_app, capsys, "tenants", "get", str(uuid.uuid4()))
    assert code == 1 and out == ""
    assert err.startswith("error (404 not_found): tenant ") and err.count("\n") == 1
    code, _, err = await run_cli(admin_app, capsys, "tenants", "create", "x", "--stripe-customer-id", "nope")
    assert code == 1 and "stripe_customer_id" in err


def test_bad_limit_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tenants", "create", "x", "--rpm", "fast"])
    assert info.value.code == 2 and "expected an integer or 'none'" in capsys.readouterr().err


async def test_admin_token_uses_the_local_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CROSSLOGIC_HOME", str(tmp_path))
    monkeypatch.delenv("CROSSLOGIC_ADMIN_JWT_SECRET", raising=False)
    assert main(["admin", "token", "--scope", "admin:read", "--subject", "ops"]) == 0
    token = capsys.readouterr().out.strip()
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=load_or_create_local_secret(tmp_path)))
    principal = await verifier.verify(token)
    assert principal.subject == "ops" and principal.scopes == {"admin:read"}


def test_format_table() -> None:
    table = format_table(
        [{"id": "1", "scopes": [], "at": "2026-11-27T05:43:00.123456+00:00"}, {"id": "22", "scopes": ["a", "b"]}],
        ("id", "scopes", "at"),
    )
    assert table.splitlines() == [
        "ID  SCOPES  AT",
        "1   (all)   2026-11-27 05:43:00",
        "22  a,b     -",
    ]


async def test_model_registry_commands(admin_app: FastAPI, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-llama-{uuid.uuid4().hex[:6]}"
    shape = ["--num-layers", "80", "--num-kv-heads", "8", "--head-dim", "128", "--max-model-len", "8192"]
    base = ["admin", "models", "create", name, "--source", "meta-llama/Llama-3.1-70B-Instruct",
            "--parameter-count", "70553706496", "--dtype", "bfloat16", *shape]
    code, out, err = await run_cli(admin_app, capsys, *base, "--accelerator", "H100-80GB")
    assert code == 1 and "135.9 GiB per GPU" in err
    code, out, _ = await run_cli(admin_app, capsys, *base, "--tensor-parallel-size", "4", "--accelerator", "H100")
    assert code == 0, out
    header, row = out.splitlines()
    assert "PER_GPU_GIB" in header and name in row and "H100-80GB" in row
    code, out, _ = await run_cli(admin_app, capsys, "admin", "models", "list", "--limit", "100", "--json")
    model = next(m for m in json.loads(out)["data"] if m["served_name"] == name)
    code, out, _ = await run_cli(admin_app, capsys, "admin", "models", "delete", model["id"])
    assert code == 0 and "model_template.deleted" in out


async def test_admin_token_ttl_is_within_the_verifiers_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CROSSLOGIC_HOME", str(tmp_path))
    monkeypatch.delenv("CROSSLOGIC_ADMIN_JWT_SECRET", raising=False)
    monkeypatch.delenv("CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S", raising=False)
    assert main(["admin", "token", "--ttl", "7200"]) == 2
    assert "--ttl must be between 1 and 3600" in capsys.readouterr().err
    assert main(["admin", "token", "--ttl", "3600"]) == 0
    token = capsys.readouterr().out.strip()
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=load_or_create_local_secret(tmp_path)))
    assert (await verifier.verify(token)).scopes == {"admin:write"}
    monkeypatch.setenv("CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S", "600")
    assert main(["admin", "token", "--ttl", "900"]) == 2
