"""`crosslogic migrate`: apply pending migrations to DATABASE_URL (or the embedded database)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crosslogic.errors import ConfigError
from crosslogic.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="apply database migrations (DATABASE_URL, or the embedded PostgreSQL)",
        description="Apply pending numbered migrations under an advisory lock. Safe to run while "
        "the application is starting: each migration is applied exactly once.",
    )
    parser.add_argument(
        "--migrations-dir", type=Path, default=None, help="folder of NNNN_name.sql files"
    )
    parser.add_argument(
        "--status", action="store_true", help="show applied and pending migrations, change nothing"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_migrate)


async def _migrate(args: argparse.Namespace) -> int:
    from crosslogic.storage.migrations import applied_versions, apply_migrations, discover_migrations
    from crosslogic.storage.pool import connect_or_explain, redact_dsn, resolve_database_url

    try:
        dsn = await resolve_database_url(Settings.from_env())
        on_disk = discover_migrations(args.migrations_dir)
        conn = await connect_or_explain(dsn)
        try:
            if args.status:
                done = set(await applied_versions(conn))
                changed = []
            else:
                changed = await apply_migrations(conn, args.migrations_dir)
                done = set(await applied_versions(conn))
        finally:
            await conn.close()
    except ConfigError as exc:
        print(f"crosslogic migrate: {exc}", file=sys.stderr)
        return 1
    rows = [
        {"version": m.version, "file": m.filename, "applied": m.version in done} for m in on_disk
    ]
    if args.json:
        print(json.dumps({"database": redact_dsn(dsn), "applied_now": [m.filename for m in changed],
                          "migrations": rows}))
        return 0
    print(f"database: {redact_dsn(dsn)}")
    if not Settings.from_env().database_url:
        print("  (embedded PostgreSQL: left running for the local stack, data kept between runs)")
    for row in rows:
        print(f"  {row['file']:<40} {'applied' if row['applied'] else 'pending'}")
    if not args.status:
        print(f"applied {len(changed)} migration(s)" if changed else "already up to date")
    return 0
