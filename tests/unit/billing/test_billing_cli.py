"""`crosslogic usage` and `crosslogic billing reconcile|dead-letters|replay` against a real database."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
from billing_checks import TenantFactory, usage

from crosslogic.cli.main import build_parser
from crosslogic.metering import UsageRecorder


async def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(await args.handler(args))


async def test_usage_and_reconcile_commands(
    pool: asyncpg.Pool, billing_db_url: str, make_tenant: TenantFactory,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", billing_db_url)
    tenant = await make_tenant()
    recorder = UsageRecorder(pool)
    recorder.record(usage(tenant, 30, 12))
    await recorder.flush()

    assert await run(["usage", "--group-by", "tenant", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["group"] == str(tenant) and rows[0]["prompt_tokens"] == 30

    # Nothing exported yet: 42 tokens unaccounted for -> exit 1, and the report says where.
    assert await run(["billing", "reconcile", "--json"]) == 1
    diffs = json.loads(capsys.readouterr().out)
    assert {(d["meter"], d["ledger"], d["unexplained"]) for d in diffs} == {
        ("input_tokens", 30, 30), ("output_tokens", 12, 12)}

    assert await run(["billing", "dead-letters", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert await run(["billing", "replay", "12345"]) == 1
    assert "no dead letter 12345" in capsys.readouterr().err


async def test_usage_command_rejects_bad_filters(
    billing_db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", billing_db_url)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["usage", "--start", "2026-01-01T00:00:00"])
    assert "needs a timezone" in capsys.readouterr().err
    assert await run(["usage", "--tenant-id", str(uuid.uuid4())]) == 0
