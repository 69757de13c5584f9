"""Migration 0013: one Stripe customer bills one tenant; existing duplicates stop it, named."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from crosslogic.storage.migrations import MigrationError, apply_migrations, default_migrations_dir

UNIQUE_CUSTOMER = "0013_unique_stripe_customer.sql"


def migrations_before_0013(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in default_migrations_dir().glob("*.sql"):
        if int(path.name[:4]) < 13:
            shutil.copy(path, folder / path.name)
    return folder


async def test_duplicates_stop_the_migration_and_are_named(empty_database_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await apply_migrations(conn, migrations_before_0013(tmp_path))
        await conn.execute(
            "INSERT INTO tenants (name, stripe_customer_id) VALUES "
            "('one', 'cus_Shared1'), ('two', 'cus_Shared1'), ('three', 'cus_Alone'), ('four', NULL), ('five', NULL)"
        )
        with pytest.raises(MigrationError) as caught:
            await apply_migrations(conn)
        message = str(caught.value)
        assert UNIQUE_CUSTOMER in message and "\n" not in message
        assert "cus_Shared1 used by tenants " in message and "one (" in message and "two (" in message
        assert "cus_Alone" not in message
        # Nothing dropped, nothing half-applied: the operator decides, then migrates again.
        assert await conn.fetchval("SELECT count(*) FROM tenants") == 5
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 13") == 0

        await conn.execute("UPDATE tenants SET stripe_customer_id = 'cus_Shared2' WHERE name = 'two'")
        assert UNIQUE_CUSTOMER in [m.filename for m in await apply_migrations(conn)]
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO tenants (name, stripe_customer_id) VALUES ('six', 'cus_Alone')")
        # Tenants without a customer are not billed and need not be unique.
        await conn.execute("INSERT INTO tenants (name) VALUES ('seven'), ('eight')")
    finally:
        await conn.close()
