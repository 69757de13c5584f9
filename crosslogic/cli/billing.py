"""`crosslogic usage` and `crosslogic billing ...`: usage reports, reconciliation, dead letters.

These talk to PostgreSQL directly (DATABASE_URL or the embedded database), like `crosslogic migrate`:
an operator can reconcile even when the API is down. `billing` is imported inside each command: it
builds on the core, and the core never imports it at module level (tests/unit/test_import_layers.py).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from crosslogic.errors import ConfigError, CrossLogicError
from crosslogic.settings import Settings


def _when(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs a timezone, e.g. 2026-01-01T00:00:00Z")
    return parsed


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=_when, help="inclusive, ISO 8601 with zone")
    parser.add_argument("--end", type=_when, help="exclusive, ISO 8601 with zone")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def register(subparsers: Any) -> None:
    usage = subparsers.add_parser("usage", help="usage and cost from the usage ledger")
    usage.add_argument("--tenant-id", type=uuid.UUID)
    usage.add_argument("--key-id", type=uuid.UUID)
    usage.add_argument("--model")
    usage.add_argument("--group-by", default="tenant",
                       choices=["tenant", "key", "model", "hour", "day"])
    _add_range(usage)
    usage.set_defaults(handler=_usage)

    billing = subparsers.add_parser("billing", help="Stripe export: reconcile, dead letters")
    commands = billing.add_subparsers(dest="billing_command", metavar="COMMAND", required=True)
    rec = commands.add_parser(
        "reconcile", help="ledger vs delivered meter events per customer/meter/hour; exit 1 when "
        "tokens are unaccounted for")
    rec.add_argument("--all", action="store_true", help="also show rows that match")
    _add_range(rec)
    rec.set_defaults(handler=_reconcile)
    dead = commands.add_parser("dead-letters", help="list billing work that failed permanently")
    dead.add_argument("--all", action="store_true", help="include replayed ones")
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(handler=_dead_letters)
    replay = commands.add_parser("replay", help="queue a dead letter again")
    replay.add_argument("id", type=int)
    replay.set_defaults(handler=_replay)


async def _with_db(name: str, body: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    from crosslogic.storage.pool import connect_or_explain, resolve_database_url

    try:
        conn = await connect_or_explain(await resolve_database_url(Settings.from_env()))
        try:
            return await body(conn)
        finally:
            await conn.close()
    except (ConfigError, CrossLogicError) as exc:
        print(f"crosslogic {name}: {exc}", file=sys.stderr)
        return 1


def _print(rows: list[Any], as_json: bool, columns: list[str]) -> None:
    data = [r.model_dump(mode="json") for r in rows]
    if as_json:
        print(json.dumps(data))
        return
    print("  ".join(f"{c:>14}" if c != columns[0] else f"{c:<38}" for c in columns))
    for row in data:
        print("  ".join(f"{row[c]!s:>14}" if c != columns[0] else f"{row[c]!s:<38}"
                        for c in columns))


async def _usage(args: argparse.Namespace) -> int:
    from crosslogic.metering.reports import GroupBy, UsageQuery, usage_report

    async def body(conn: asyncpg.Connection) -> int:
        query = UsageQuery(tenant_id=args.tenant_id, key_id=args.key_id, model=args.model,
                           start=args.start, end=args.end, group_by=GroupBy(args.group_by))
        rows = await usage_report(conn, query)
        _print(rows, args.json, ["group", "requests", "cancelled", "failed", "prompt_tokens",
                                 "completion_tokens", "cost"])
        return 0

    return await _with_db("usage", body)


async def _reconcile(args: argparse.Namespace) -> int:
    from billing.reconcile import reconcile

    async def body(conn: asyncpg.Connection) -> int:
        rows = await reconcile(conn, start=args.start, end=args.end, only_differences=not args.all)
        if args.json:
            print(json.dumps([r.model_dump(mode="json") for r in rows]))
        else:
            for r in rows:
                print(f"{r.hour:%Y-%m-%dT%H}Z {r.customer_id or r.tenant_id!s:<36} {r.meter:<13} "
                      f"ledger={r.ledger} delivered={r.delivered} pending={r.pending} "
                      f"dead={r.dead} unexplained={r.unexplained}")
            if not rows:
                print("ledger and delivered meter events agree")
        return 1 if any(r.unexplained for r in rows) else 0

    return await _with_db("billing reconcile", body)


async def _dead_letters(args: argparse.Namespace) -> int:
    from billing.dead_letters import list_dead_letters

    async def body(conn: asyncpg.Connection) -> int:
        rows = await list_dead_letters(conn, include_replayed=args.all, limit=500)
        if args.json:
            print(json.dumps([r.model_dump(mode="json") for r in rows]))
        for r in [] if args.json else rows:
            print(f"{r.id:>6} {r.kind:<11} {r.ref:<24} {r.created_at:%Y-%m-%d %H:%M} {r.reason}")
        return 0

    return await _with_db("billing dead-letters", body)


async def _replay(args: argparse.Namespace) -> int:
    from billing.dead_letters import replay_dead_letter
    from crosslogic.audit.log import AuditContext, write_audit

    async def body(conn: asyncpg.Connection) -> int:
        actor = f"cli:{getpass.getuser()}"
        async with conn.transaction():
            letter = await replay_dead_letter(conn, args.id, actor)
            await write_audit(conn, AuditContext(actor=actor), action="billing.dead_letter.replay",
                              target_type="dead_letter", target_id=str(args.id),
                              after=letter.model_dump(mode="json"))
        print(f"dead letter {letter.id} ({letter.kind} {letter.ref}) queued again")
        return 0

    return await _with_db("billing replay", body)
