"""Shared helpers of the admin API tests: the test secret, token minting and error assertions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from crosslogic.admin.local_secret import mint_admin_token
from crosslogic.cli.main import build_parser

ADMIN_SECRET = "t3st-Adm1n-S3cret-f0r-Unit-Tests-9q8w7e6r5t"
CLIENT_ADDR = "203.0.113.7"

ClientFactory = Callable[..., httpx.AsyncClient]


def admin_token(subject: str = "alice@example.com", scopes: str = "admin:write") -> str:
    return mint_admin_token(ADMIN_SECRET, subject=subject, scopes=scopes.split(), ttl_s=300)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["code"], str)
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in response.text
    return error


async def run_cli(app: FastAPI, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run a CLI command against the in-process app: (exit code, stdout, stderr)."""
    args = build_parser().parse_args([*argv, "--token", admin_token(subject="cli-test")])
    args.transport = httpx.ASGITransport(app=app)
    code = await args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err
